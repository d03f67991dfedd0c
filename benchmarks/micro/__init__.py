"""Micro-benchmarks: what one call costs (parse, build, render, join, a scrape's body), timed
by pytest-benchmark in this process. `make bench-micro`; never part of the test suite
(its `testpaths` is tests/), since timings on a shared machine assert nothing."""
