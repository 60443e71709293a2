# syntax=docker/dockerfile:1
#
# ModelPress images, one file, three targets:
#   docker build --target operator -t modelpress-operator .
#   docker build --target job -t modelpress-job .                            # CPU wheels
#   docker build --target job --build-arg TORCH_VARIANT=cuda -t modelpress-job:cuda .
#   docker build --target serving -t modelpress-serving .
#
# operator: the kopf control plane; no torch, no onnxruntime (small, quick to pull).
# job:      compression Jobs (`python -m modelpress.jobs`); it can serve too.
# serving:  the modelpress-onnx runtime (`python -m modelpress.jobs.serving`) that the
#           chart's ClusterServingRuntime starts: kserve, onnxruntime, numpy, tokenizers;
#           no torch, no transformers (see README for its size).
#
# Packages are installed into a virtualenv in a builder stage and only that venv is
# copied into the final stages, so nothing used to build (pip caches, sources) ships.

# Pinned base: the Python minor version the package is tested with on Debian bookworm.
FROM python:3.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---------------------------------------------------------------- builders
FROM base AS source
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
COPY operator ./operator
COPY jobs ./jobs

FROM source AS build-operator
RUN python -m venv /opt/modelpress \
    && /opt/modelpress/bin/pip install --no-cache-dir -c constraints.txt '.[operator]' \
    && /opt/modelpress/bin/pip uninstall --yes pip

FROM source AS build-serving
RUN python -m venv /opt/modelpress \
    && /opt/modelpress/bin/pip install --no-cache-dir -c constraints.txt '.[serving]' \
    && /opt/modelpress/bin/pip uninstall --yes pip

FROM source AS build-job
# cpu: PyTorch's CPU wheels (PyPI's default Linux torch is the multi-GB CUDA build).
# cuda: PyTorch's CUDA wheels and onnxruntime-gpu in place of onnxruntime.
ARG TORCH_VARIANT=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN case "${TORCH_VARIANT}" in \
      cpu) index="${TORCH_CPU_INDEX}" ;; \
      cuda) index="${TORCH_CUDA_INDEX}" ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, got '${TORCH_VARIANT}'" >&2; exit 2 ;; \
    esac \
    && python -m venv /opt/modelpress \
    && torch_pin="$(grep -E '^torch==' constraints.txt)" \
    && /opt/modelpress/bin/pip install --no-cache-dir --index-url "${index}" "${torch_pin}" \
    && /opt/modelpress/bin/pip install --no-cache-dir -c constraints.txt '.[jobs]' \
    && if [ "${TORCH_VARIANT}" = cuda ]; then \
         ort_version="$(/opt/modelpress/bin/python -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')" \
         && /opt/modelpress/bin/pip uninstall --yes onnxruntime \
         && /opt/modelpress/bin/pip install --no-cache-dir "onnxruntime-gpu==${ort_version}"; \
       fi \
    && /opt/modelpress/bin/pip uninstall --yes pip

# ---------------------------------------------------------------- final stages
# A numeric non-root user so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
FROM base AS runtime
RUN groupadd --gid 10001 modelpress \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/modelpress modelpress
ENV PATH=/opt/modelpress/bin:${PATH}
WORKDIR /home/modelpress
LABEL org.opencontainers.image.source="https://github.com/modelpress/modelpress" \
      org.opencontainers.image.licenses="Apache-2.0"

FROM runtime AS operator
COPY --from=build-operator /opt/modelpress /opt/modelpress
USER 10001:10001
# Prometheus metrics (MODELPRESS_METRICS_PORT) and kopf's liveness endpoint (MODELPRESS_LIVENESS_PORT).
EXPOSE 8000 8080
ENTRYPOINT ["modelpress", "operator"]

FROM runtime AS serving
COPY --from=build-serving /opt/modelpress /opt/modelpress
# Read-only root filesystem with an emptyDir on /tmp, as for the job image.
ENV HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache
USER 10001:10001
# KServe ModelServer's HTTP port (V1 and V2 protocols, /metrics).
EXPOSE 8080
ENTRYPOINT ["python", "-m", "modelpress.jobs.serving"]

FROM runtime AS job
COPY --from=build-job /opt/modelpress /opt/modelpress
# Jobs and serving run with a read-only root filesystem and an emptyDir on /tmp:
# every cache (Hugging Face, torch, matplotlib...) goes there.
ENV HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HUB_OFFLINE=1
USER 10001:10001
# The modelpress-onnx serving runtime's HTTP port (the compression Job listens on nothing).
EXPOSE 8080
ENTRYPOINT ["python", "-m", "modelpress.jobs"]
