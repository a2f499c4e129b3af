# rtsoak as an image: the package installed from this checkout, the shipped scenarios and audio
# fixtures beside it, run as a non-root user. `make image` builds it; docs/scaling.md runs it.
#
# The base is pinned to a patch release and a Debian release. Pin its digest too where a registry
# is reachable (`docker buildx imagetools inspect python:3.11.17-slim-trixie`), e.g.
#   make image PYTHON_IMAGE=python:3.11.17-slim-trixie@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11.17-slim-trixie

# Build stage: a virtual environment with rtsoak and its runtime dependencies (no test extras).
# The compiled dependencies ship manylinux wheels (numpy, pandas, pyarrow, scipy, soundfile with
# its own libsndfile, soxr, uvloop); the one sdist (autograd-gamma, via lifelines) is pure Python.
# So no compiler is installed.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/rtsoak/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY harness ./harness
RUN /opt/rtsoak/venv/bin/python -m pip install --no-cache-dir . \
    && /opt/rtsoak/venv/bin/rtsoak --version

FROM ${PYTHON_IMAGE}
ARG REVISION=unknown
LABEL org.opencontainers.image.title="rtsoak" \
      org.opencontainers.image.description="Connection-reliability soak tests for realtime speech-to-text WebSocket APIs" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.revision="${REVISION}"

RUN groupadd --system --gid 10001 rtsoak \
    && useradd --system --no-log-init --uid 10001 --gid rtsoak \
       --home-dir /home/rtsoak --create-home --shell /usr/sbin/nologin rtsoak

COPY --from=build /opt/rtsoak/venv /opt/rtsoak/venv

# Scenarios name their audio as "fixtures/audio", found from the working directory (and
# `rtsoak list` reads ./scenarios), so both sit under the working directory, read-only.
WORKDIR /opt/rtsoak
COPY scenarios ./scenarios
COPY fixtures/audio ./fixtures/audio
# The default --out (./reports) for a plain `docker run`; the Kubernetes Jobs write to /runs.
RUN install -d -o rtsoak -g rtsoak /opt/rtsoak/reports /runs

# MPLCONFIGDIR: matplotlib's cache in /tmp, so a read-only root filesystem works (the Jobs
# mount an emptyDir there).
ENV PATH=/opt/rtsoak/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib

USER 10001:10001
ENTRYPOINT ["rtsoak"]
CMD ["list"]
