# syntax=docker/dockerfile:1
# twitch-cds container image. Four stages:
#   runtime-base  Debian bookworm with its Python 3.11 and the CA certificates;
#   build         + gcc and the Python headers: durable-rules ships as an sdist with a C
#                 extension. The virtual environment built here is all that moves on;
#   app-assets    Debian's Node.js and npm install LHC-Forms (app/package-lock.json) for the
#                 assessment app; only its built files (dist/lforms) move on, Node does not;
#   final         runtime-base + that environment + rules/ and hooks/ as data + LHC-Forms; no
#                 compiler, no Node, non-root, configured only by TWITCH_CDS_* variables.
# BASE_IMAGE is any Debian bookworm image. scripts/container-smoke.sh builds without a
# registry by making one with debootstrap and tagging it with this name.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE} AS runtime-base
# Versions are Debian bookworm's (security updates included), not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM runtime-base AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev python3-venv \
 && rm -rf /var/lib/apt/lists/*
# pip uses the system CA bundle (a build behind a TLS-inspecting proxy mounts its own over it).
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds ./cds
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM ${BASE_IMAGE} AS app-assets
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src/app
COPY app/package.json app/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM runtime-base
RUN useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin cds
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY rules ./rules
COPY hooks ./hooks
COPY --from=app-assets /src/app/node_modules/lforms/dist/lforms ./assets/lforms
RUN mkdir /app/data && chown cds:cds /app/data
# Defaults only: every TWITCH_CDS_* setting (README, "Settings") can be given with `-e`.
# SQLite in /app/data suits one container; replicas share TWITCH_CDS_DATABASE_URL=postgresql+psycopg://...
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TWITCH_CDS_HOST=0.0.0.0 \
    TWITCH_CDS_PORT=8080 \
    TWITCH_CDS_WORKERS=2 \
    TWITCH_CDS_RULES_DIR=/app/rules \
    TWITCH_CDS_HOOKS_DIR=/app/hooks \
    TWITCH_CDS_APP_ASSETS_DIR=/app/assets/lforms \
    TWITCH_CDS_DATABASE_URL=sqlite:////app/data/twitch-cds.sqlite3
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['TWITCH_CDS_PORT'], timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["twitch-cds", "serve"]
