"""How big and how long: the sizes and phases of a full run, `--quick` and `--smoke`."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Mode:
    name: str  # full, quick or smoke
    steady: int  # projects of the steady-state run (x `products`)
    big: int  # projects of the Prometheus-like run
    products: int
    phase: float  # seconds of each steady-state phase
    scrapers: int
    big_seconds: float
    scrape_interval: float  # the Prometheus-like run's, with `scrape_timeout`
    scrape_timeout: float
    warm_scrapes: int
    gauges: int  # projects of the naive-Gauges comparison
    interval_projects: int
    interval_rpm: float
    interval_periods: int
    budget_seconds: float
    teams: int
    team_projects: int
    team_rpm: float
    team_seconds: float
    isolation_seconds: float
    hostile: tuple[str, ...]
    slow_connections: int
    slow_seconds: float
    churn_cycles: int
    startups: int
    tuning_phase: float  # seconds of each phase of one runtime-tuning configuration
    tuning_rounds: int  # every configuration this many times, interleaved
    tuning_settle: float  # seconds from spawn before RSS is read (past the minute's trim)


ALL_HOSTILE = (
    "gzip bomb, two layers",
    "millions of tiny products",
    "millions of tiny values",
    "nesting 100,000 deep",
    "10,000 products, the cap",
    "10,001 products",
)
FULL = Mode(
    name="full",
    steady=1000,
    big=5000,
    products=50,
    phase=40.0,
    scrapers=8,
    big_seconds=120.0,
    scrape_interval=15.0,
    scrape_timeout=10.0,
    warm_scrapes=40,
    gauges=100,
    interval_projects=250,
    interval_rpm=600,
    interval_periods=4,
    budget_seconds=130.0,
    teams=10,
    team_projects=100,
    team_rpm=600,
    team_seconds=75.0,
    isolation_seconds=40.0,
    hostile=ALL_HOSTILE,
    slow_connections=1000,
    slow_seconds=5.0,
    churn_cycles=500,
    startups=5,
    tuning_phase=20.0,
    tuning_rounds=3,
    tuning_settle=65.0,
)
MODES = {
    "full": FULL,
    # the same sizes, shorter phases
    "quick": replace(
        FULL,
        name="quick",
        phase=15.0,
        big_seconds=45.0,
        warm_scrapes=15,
        interval_periods=2,
        budget_seconds=65.0,
        team_seconds=40.0,
        isolation_seconds=25.0,
        churn_cycles=150,
        startups=3,
        tuning_phase=10.0,
        tuning_rounds=1,
    ),
    # toy sizes: proves that every section runs, in seconds; no figure means anything
    "smoke": Mode(
        name="smoke",
        steady=20,
        big=40,
        products=3,
        phase=0.3,
        scrapers=2,
        big_seconds=1.0,
        scrape_interval=0.5,
        scrape_timeout=10.0,
        warm_scrapes=3,
        gauges=5,
        interval_projects=120,
        interval_rpm=6000,
        interval_periods=1,
        budget_seconds=1.0,
        teams=2,
        team_projects=5,
        team_rpm=600,
        team_seconds=1.5,
        isolation_seconds=0.5,
        hostile=("nesting 100,000 deep",),
        slow_connections=20,
        slow_seconds=1.0,
        churn_cycles=3,
        startups=1,
        tuning_phase=0.3,
        tuning_rounds=1,
        tuning_settle=0.0,
    ),
}
