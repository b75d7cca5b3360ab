# rxstreamer in a container: the streamer (`run`, the default command) and the reference broker (`mq`) in one image.
#
#   docker build -t rxstreamer .
#
# README.md ("Running in a container") has the run examples; deploy/ has the Kubernetes manifests. No Docker engine
# runs in CI: `make lint` lints this file (hadolint), and tests/test_wheel_install.py builds the wheel exactly as the
# builder stage does, installs it with the extras the runtime stage installs into a fresh virtual environment and
# runs it from there.

# --- builder: the wheel, from the few files it is made of ----------------------------------------------------------
FROM python:3.11-slim AS builder
WORKDIR /src
# .dockerignore keeps everything else out of the context; the package's settings.toml is a link to ../settings.toml.
COPY pyproject.toml README.md settings.toml ./
COPY rxstreamer/ ./rxstreamer/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime: the wheel with the broker and NATS extras, tini as PID 1, a non-root user ----------------------------
FROM python:3.11-slim

# tini is PID 1: it forwards SIGTERM and SIGINT to rxstreamer (which stops cleanly on either) and reaps children.
# The numeric user and group 10001 own /var/lib/rxstreamer, where checkpoints and the broker's data go (a volume).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.* \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 rxstreamer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/rxstreamer \
       --shell /usr/sbin/nologin rxstreamer \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/rxstreamer

# The wheel is bind-mounted from the builder for this one step: it leaves no layer behind. DL3013 (pin versions) is
# ignored because the package is the wheel just built, named by a glob with extras that hadolint cannot read as a
# file; its dependencies resolve within the ranges pyproject.toml gives (a constraints file would lock them).
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    set -- /wheels/rxstreamer-*.whl \
    && pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore "$1[broker,nats]"

# Settings: RXSTREAMER_* variables (RXSTREAMER_TELEMETRY__BATCH_SIZE=100), or a mounted file named by
# RXSTREAMER_CONFIG=/etc/rxstreamer/streamer.toml; variables win over the file, flags over both. The metrics endpoint
# (/metrics, /healthz, /readyz) is on in the container: 9464 for the streamer; the broker is given 9465 by its own
# variable. The broker listens on every interface, not only 127.0.0.1, so that other containers reach it.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RXSTREAMER_OBSERVABILITY__LISTEN=0.0.0.0:9464 \
    RXSTREAMER_BROKER__LISTEN=0.0.0.0:50051

# Checkpoints (--checkpoint-path /var/lib/rxstreamer/checkpoint.json) and the broker's data directory
# (mq --data-dir /var/lib/rxstreamer/broker) belong on this volume: the root filesystem may be read-only.
WORKDIR /var/lib/rxstreamer
VOLUME ["/var/lib/rxstreamer"]
USER 10001:10001

# 9464: the streamer's /metrics, /healthz and /readyz; 9465: the broker's; 50051: the broker's gRPC port.
EXPOSE 9464 9465 50051

# slim has no curl: Python's urllib asks /healthz on the port RXSTREAMER_OBSERVABILITY__LISTEN names.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; host, _, port = os.environ['RXSTREAMER_OBSERVABILITY__LISTEN'].rpartition(':'); host = host.strip('[]'); host = '127.0.0.1' if host in ('', '0.0.0.0', '::') else host; host = f'[{host}]' if ':' in host else host; urllib.request.urlopen(f'http://{host}:{port}/healthz', timeout=4)"]

ENTRYPOINT ["tini", "--", "rxstreamer"]
CMD ["run"]
