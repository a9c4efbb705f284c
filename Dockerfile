# syntax=docker/dockerfile:1
# Build stage: durable-rules ships as an sdist with a C extension, so it needs gcc and the
# Python headers. Only the built virtual environment is carried into the final image.
FROM python:3.12-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds ./cds
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .

# Final stage: no compiler, non-root user, knowledge and service definitions as data.
FROM python:3.12-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin cds
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY rules ./rules
COPY hooks ./hooks
RUN mkdir /app/data && chown cds:cds /app/data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TWITCH_CDS_RULES_DIR=/app/rules \
    TWITCH_CDS_HOOKS_DIR=/app/hooks \
    TWITCH_CDS_DATABASE_URL=sqlite:////app/data/twitch-cds.sqlite3
USER cds
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["twitch-cds", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
