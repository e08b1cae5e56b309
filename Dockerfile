# syntax=docker/dockerfile:1
#
# ddrnet-serve images. Two targets:
#
#   serve (the default, last stage): the inference server with ONNX Runtime, no MindSpore (the serving
#         install, `pip install .`); what a cluster pulls for every pod.
#       docker build -t ddrnet-serve .
#       docker run --rm -p 8000:8000 -p 8001:8001 -v "$PWD/demo/models:/models:ro" ddrnet-serve
#   train: the full install (`pip install .[train]`: MindSpore, export, the digits demo) for training
#         and export jobs; its entrypoint is `ddrnet`.
#       docker build --target train -t ddrnet-serve:train .
#       docker run --rm -v "$PWD/runs:/runs" ddrnet-serve:train export --run-dir /runs/r --repository /runs/models --name m
#
# Build arguments (all optional):
#   EXTRAS            more pip extras of the project, comma separated: "openvino" (the bf16/int8 CPU
#                     runtime), "otel" (OpenTelemetry tracing), "mindspore" (serve with --runtime
#                     mindspore), "torch"
#   LITE_WHEEL        path, inside the build context, of a MindSpore Lite wheel for the target
#                     (cp311 build from MindSpore's download site: CPU, GPU or Ascend310); installed
#                     into the same venv when set
#   ONNXRUNTIME       pip requirement that replaces the CPU onnxruntime, e.g. "onnxruntime-gpu>=1.18,<2"
#   MODEL_REPOSITORY  path, inside the build context, of a model repository to bake into /models
#                     (serve target; otherwise mount one at /models)
#
# Everything the server can be told is an option or a DDRNET_* environment variable; nothing secret is
# baked in (pass DDRNET_AUTH_TOKEN and TLS files at run time). PID 1 is tini in both targets: it reaps
# orphaned worker processes and forwards signals.

# ---------------------------------------------------------------------------------------------------
FROM python:3.11.13-slim-bookworm AS builder

ARG EXTRAS=""
ARG LITE_WHEEL=""
ARG ONNXRUNTIME=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src
# Only what `pip install .` needs: the build configuration and the packages pyproject.toml lists.
COPY pyproject.toml README.md ./
COPY model/ model/
COPY inference/ inference/
COPY training/ training/
COPY server/ server/
COPY clients/ clients/
COPY ops/ ops/
COPY protos/ protos/
COPY cli/ cli/

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The project's own dependency ranges (pyproject.toml) are the pins here.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".${EXTRAS:+[${EXTRAS}]}"

# Optional runtime swaps (deploy/docker/swap_runtimes.sh); the build context is bind-mounted so an
# unset wheel path needs no file.
COPY deploy/docker/swap_runtimes.sh /usr/local/bin/swap_runtimes
RUN --mount=type=bind,source=.,target=/context \
    swap_runtimes "${ONNXRUNTIME}" "${LITE_WHEEL}" \
    && ddrnet --help > /dev/null

# ---------------------------------------------------------------------------------------------------
# The full install on top: MindSpore and the export and demo dependencies, then the same swaps (the
# CPU onnxruntime that [train] may bring back is replaced again).
FROM builder AS train-builder
ARG EXTRAS=""
ARG LITE_WHEEL=""
ARG ONNXRUNTIME=""
# The project's own dependency ranges (pyproject.toml) are the pins here.
# hadolint ignore=DL3013
RUN --mount=type=bind,source=.,target=/context \
    pip install --no-cache-dir ".[train${EXTRAS:+,${EXTRAS}}]" \
    && swap_runtimes "${ONNXRUNTIME}" "${LITE_WHEEL}" \
    && ddrnet train --help > /dev/null

# ---------------------------------------------------------------------------------------------------
# Training and export jobs (`docker build --target train`): `ddrnet <command>` as uid 10001.
FROM python:3.11.13-slim-bookworm AS train

# libgomp1: MindSpore's CPU kernels link against the system OpenMP runtime (not in the slim image).
# Not version-pinned: Debian replaces point releases in place; the base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgomp1 tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ddrnet \
    && useradd --system --uid 10001 --gid ddrnet --home-dir /home/ddrnet --create-home \
        --shell /usr/sbin/nologin ddrnet

COPY --from=train-builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/ddrnet \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /home/ddrnet
USER 10001:10001
ENTRYPOINT ["tini", "--", "ddrnet"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------------
# The serving image (the default target): no MindSpore, no training stack.
FROM python:3.11.13-slim-bookworm AS serve

ARG MODEL_REPOSITORY=""

# tini: PID 1 that reaps orphaned grandchildren of the worker processes and forwards signals to the
# server (the same in Kubernetes, which runs the image's ENTRYPOINT).
# Not version-pinned: Debian replaces point releases in place, so a pin would break rebuilds; the
# base image tag fixes the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ddrnet \
    && useradd --system --uid 10001 --gid ddrnet --home-dir /home/ddrnet --create-home \
        --shell /usr/sbin/nologin ddrnet \
    && mkdir -p /models \
    && chown ddrnet:ddrnet /models

COPY --from=builder /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/ddrnet/healthcheck.py

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=bind,source=.,target=/context \
    if [ -n "${MODEL_REPOSITORY}" ]; then \
        cp -r "/context/${MODEL_REPOSITORY}/." /models/ && chown -R ddrnet:ddrnet /models; \
    fi

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/ddrnet

WORKDIR /home/ddrnet
USER 10001:10001

VOLUME ["/models"]
# 8000: HTTP (classify, Open Inference Protocol v2 REST, /metrics); 8001: gRPC (Classify, OIP v2, health)
EXPOSE 8000 8001

# Ready = model loaded and warmed (OIP v2 /v2/health/ready); the script follows DDRNET_HTTP_PORT,
# DDRNET_HTTP_HOST, DDRNET_TLS_CERT and the --http-port/--http-host/--tls-cert options of PID 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/ddrnet/healthcheck.py"]

ENTRYPOINT ["tini", "--", "ddrnet", "serve"]
CMD ["--model-repository", "/models", "--http-host", "0.0.0.0", "--grpc-host", "0.0.0.0"]
