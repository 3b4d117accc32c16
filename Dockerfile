# syntax=docker/dockerfile:1
#
# One image for the model server, the Locust master and the Locust workers (CPU).
# The CUDA variant is Dockerfile.cuda.
#
#   docker build -t modelsoak:0.1.0 .
#   docker run --rm -p 8001:8001 -p 8002:8002 modelsoak:0.1.0                  # server, mlp model
#   docker run --rm modelsoak:0.1.0 locust -f /app/loadgen --worker --master-host MASTER
#
# Pods need no network and no writable root filesystem: the built-in models are
# exported at build time (--prepare-only) into MODELSOAK_CACHE_DIR, owned by root
# and readable by everyone, so the server reads them and never writes there.
# Libraries that keep a cache of their own (onnxruntime writes a device id and a
# small database under $XDG_CACHE_HOME) use /tmp, an emptyDir in the pods.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# A CPU build of torch: the default wheel on PyPI pulls a multi-GB CUDA build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Every built-in model (server/builtin.py; tests/test_image.py checks the list).
ARG BUILTIN_MODELS="identity mlp resnet18 sleep leaky"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODELSOAK_CACHE_DIR=/opt/modelsoak/models \
    HOME=/home/modelsoak \
    XDG_CACHE_HOME=/tmp/.cache

# The user every process runs as (the Kubernetes manifests say runAsUser 10001).
RUN groupadd --system --gid 10001 modelsoak \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/modelsoak --create-home \
       --shell /usr/sbin/nologin modelsoak

# gcc and libnghttp2's headers build the load generator's native gRPC client
# (loadtest/native) below; libnghttp2 stays for it at run time. Versions are the
# base image's Debian release's.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libnghttp2-dev \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the CPU index: `pip install .` below then finds torch>=2.4
# satisfied and keeps it.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY loadgen ./loadgen
COPY loadtest ./loadtest
COPY exporters ./exporters
COPY training ./training
# A regular (not editable) install: the console scripts modelsoak-server and
# locust, and the packages in site-packages. /app/loadgen stays as the folder
# `locust -f /app/loadgen` reads; its bytecode is compiled now because the root
# filesystem is read-only at run time.
RUN pip install /app \
    && rm -rf /app/build /app/*.egg-info \
    && python -m compileall -q /app/loadgen /app/loadtest \
    && python -c "from loadtest.native_client import build; why = build(); assert why is None, why"

# The built-in models, made once here (ONNX export, the same bytes on every
# build of the same definition and torch version).
RUN set -eu; \
    for model in ${BUILTIN_MODELS}; do \
      modelsoak-server --model "$model" --device cpu --prepare-only --cache-dir "${MODELSOAK_CACHE_DIR}"; \
    done; \
    chmod -R a+rX /opt/modelsoak; \
    rm -rf "${XDG_CACHE_HOME}"

USER 10001:10001
# 8001 gRPC, 8002 server metrics, 8089 Locust web UI, 5557 Locust master,
# 9646 headless master's Prometheus metrics.
EXPOSE 8001 8002 8089 5557 9646
CMD ["modelsoak-server", "--host", "0.0.0.0", "--model", "mlp"]
