"""Support shared by the test suite and the benchmarks, never shipped with the exporter:
fake Latitude.sh APIs over real sockets, and the one way both wait for a condition."""
