# syntax=docker/dockerfile:1

# ---- build: the project and every dependency as wheels ------------------------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations

RUN pip wheel --wheel-dir /wheels .

# ---- runtime: a plain (non-editable) install, no build tools, no sources ------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels akool-relay

# The embedded SQLite default lives in /data (mount a volume there to keep it); set DATABASE_URL to
# a postgresql:// URL to run several replicas.
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin relay \
    && mkdir -p /data \
    && chown relay:relay /data

WORKDIR /data
USER relay

ENV RELAY_HOST=0.0.0.0 \
    RELAY_PORT=8000 \
    DATABASE_URL=sqlite:////data/akool-relay.db

EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RELAY_PORT', '8000') + '/healthz', timeout=3)"]

CMD ["akool-relay", "serve"]
