"""Prometheus exporter for the billing usage of Latitude.sh projects."""

__version__ = "0.2.0"
