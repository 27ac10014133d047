# syntax=docker/dockerfile:1
# streamscore worker + HTTP API image (one image, two commands):
#   python -m streamscore worker   |   python -m streamscore serve
# Configured only through the env vars of streamscore/settings.py (see docker-compose.yml).
# Models are NOT in this image: they are served by Triton from ./triton_repo (`make models`).

# --- build: wheels for the project and every dependency ---------------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# faust-streaming 0.15.3 ships only an sdist with optional C speedups: give it a compiler here
# (this stage is thrown away, the runtime image stays slim).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Dependencies first, hash-checked: requirements-runtime.lock (`make lock`) pins every package with
# its sha256, pip refuses anything else (--require-hashes). The workers and the API only talk to
# Triton, so CPU torch is enough: the PyTorch CPU index serves the locked torch==2.13.0+cpu
# (hundreds of MB instead of the CUDA build's gigabytes).
COPY requirements-runtime.lock .
RUN pip wheel --wheel-dir /wheels --require-hashes \
        --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements-runtime.lock
COPY . .
# the project itself, built with the locked setuptools (torch's dependency, already in /wheels)
RUN pip install --no-index --find-links /wheels setuptools \
 && pip wheel --wheel-dir /wheels --no-deps --no-build-isolation .

# --- runtime -------------------------------------------------------------------------------
FROM python:3.11-slim

# STREAMSCORE_RUN_DIR: a writable place for run-time files (the Settings default would be
# under site-packages, which the non-root user cannot write).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STREAMSCORE_RUN_DIR=/app/run

RUN groupadd --system --gid 10001 streamscore \
 && useradd --system --uid 10001 --gid streamscore --home-dir /app --shell /usr/sbin/nologin streamscore \
 && mkdir -p /app/run \
 && chown -R streamscore:streamscore /app

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels streamscore

USER streamscore:streamscore
WORKDIR /app

# 8080: HTTP API (HTTP_PORT), 9108: worker /metrics (WORKER_METRICS_PORT)
EXPOSE 8080 9108
CMD ["python", "-m", "streamscore", "worker"]
