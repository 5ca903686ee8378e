# ---- build: the project and every dependency as wheels, at the versions pinned in constraints.txt ----
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations

RUN pip wheel --constraint constraints.txt --wheel-dir /wheels . \
    && cp constraints.txt /wheels/

# ---- runtime: a plain (non-editable) install, no build tools, no sources ------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels --constraint /wheels/constraints.txt akool-relay

# The embedded SQLite default lives in /data (mount a volume there to keep it); set DATABASE_URL to
# a postgresql:// URL to run several replicas. /data belongs to group 0 with the owner's rights, so
# the image also runs under an arbitrary UID in group 0 (OpenShift's restricted SCC, `--user 12345:0`).
RUN useradd --system --uid 10001 --gid 0 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin relay \
    && mkdir -p /data \
    && chown 10001:0 /data \
    && chmod g=u /data

WORKDIR /data
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:0

ENV RELAY_HOST=0.0.0.0 \
    RELAY_PORT=8000 \
    DATABASE_URL=sqlite:////data/akool-relay.db

EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RELAY_PORT', '8000') + '/healthz', timeout=3)"]

CMD ["akool-relay", "serve"]
