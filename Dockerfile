# energy-worker: router, processor, pusher (and, with MQTT_HOST, the publisher) under
# supervisord, in one container.
# Built for the Raspberry Pi by default; other hosts choose their base, e.g.
#   docker build --build-arg BASE_IMAGE=python:3.12.11-alpine3.22 .          (amd64, arm64)
# Pinned to a release, as every image of docker-compose.yaml.
ARG BASE_IMAGE=arm32v7/python:3.12.11-alpine3.22
FROM ${BASE_IMAGE}

# bash runs entrypoint.sh; tzdata makes TZ work for the log times and the pusher's schedule.
# Alpine's package versions change with every base image, so they are not pinned here.
# hadolint ignore=DL3018
RUN apk add --no-cache bash tzdata

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app/services \
    POSTGRES_INI=/run/energy-worker/postgres.ini \
    ENERGY_WORKER_RUN_DIR=/run/energy-worker \
    TZ=Europe/Copenhagen

WORKDIR /app

# Pure-Python requirements only (pinned): no compiler in the image.
COPY requirements.txt ./
RUN pip install --no-cache-dir --only-binary=:all: -r requirements.txt

# The application runs as "energy"; it writes one place only, its run dir: supervisord's
# socket, the rendered postgres.ini and the programs' secrets (docker-compose.yaml mounts a
# tmpfs there: the root filesystem is read-only).
RUN addgroup -S -g 10001 energy \
    && adduser -S -D -H -u 10001 -h /app -s /sbin/nologin -G energy energy \
    && install -d -o energy -g energy -m 0700 /run/energy-worker \
    && install -d -m 0755 /etc/energy-worker

# Code stays root-owned: the running service cannot change it. Compiled ahead, for the
# optimization level the entrypoint runs it at (PYTHONOPTIMIZE=2), since it cannot be written
# at run time: otherwise every start compiles it again, in memory.
COPY etc/ ./etc/
COPY pyproject.toml ./
COPY services/ ./services/
COPY supervisord.conf entrypoint.sh ./
RUN python -m compileall -q -o 0 -o 2 /app/services "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# The operator's command, `energy-worker` on the PATH (docker compose exec energy-worker
# energy-worker status): the project installed as a package, pure Python, built with the
# setuptools pinned in pyproject.toml. The code that runs is still /app/services (PYTHONPATH
# comes first); the build's leftovers go.
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build services/energy_worker.egg-info

USER 10001:10001

# Unhealthy when any program is not RUNNING (supervisorctl status exits non-zero then).
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD ["supervisorctl", "-c", "/app/supervisord.conf", "status"]

ENTRYPOINT ["/app/entrypoint.sh"]
CMD ["supervisord"]
