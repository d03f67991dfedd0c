# syntax=docker/dockerfile:1
# latitudesh-exporter: dependencies from the hash-locked requirements.lock, then the
# package as a wheel, into a venv; only the venv (byte-code compiled) is shipped.
#
#   docker build -t latitudesh-exporter .
#   docker run --rm -p 10067:10067 --read-only latitudesh-exporter --demo
#
# BASE_IMAGE is overridable so the image can be built from a local base where no
# registry is reachable (the test suite does this); both stages must share it because
# the venv points at the base's Python.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
# Builds without a package index can point pip at a wheelhouse in the context:
#   --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src/wheelhouse
ARG PIP_NO_INDEX=""
ARG PIP_FIND_LINKS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock changes, not on every
# change to the source, and every file is checked against its hash.
COPY requirements.lock ./
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# Byte-code is compiled here and kept: on a read-only root, Python could not write it
# and would compile every module again at each start.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /tmp/dist . \
 && /opt/venv/bin/pip install --no-deps /tmp/dist/*.whl \
 && /opt/venv/bin/pip uninstall --yes pip \
 && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv

FROM ${BASE_IMAGE}
ARG VERSION=0.2.0
LABEL org.opencontainers.image.title="latitudesh-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the billing usage of Latitude.sh projects" \
      org.opencontainers.image.source="https://github.com/latitudesh-exporter/latitudesh-exporter" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Two malloc arenas hold the daemon's heap in about 15 % less RSS than glibc's one per
# busy thread; glibc reads this before any thread starts (the exporter's own mallopt
# leaves it alone when it is set).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    LATITUDESH_EXPORTER_STATE__PATH=/var/lib/latitudesh-exporter/state.db
COPY --from=build /opt/venv /opt/venv
# The state (the last answer of every project, for a warm start) lives on a volume the
# exporter's user owns: the root stays read-only.
RUN install -d -m 0700 -o 10001 -g 10001 /var/lib/latitudesh-exporter
VOLUME ["/var/lib/latitudesh-exporter"]
# A numeric uid needs no /etc/passwd entry and lets runAsNonRoot verify it.
USER 10001:10001
EXPOSE 10067
# The exporter checks itself (the slim base has no curl, and needs none): at the
# address and scheme its own flags say, so a changed port or TLS keeps it healthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["latitudesh-exporter", "healthcheck"]
ENTRYPOINT ["latitudesh-exporter"]
