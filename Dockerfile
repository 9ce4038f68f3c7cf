# syntax=docker/dockerfile:1
# pomme: KServe v2 / Open Inference Protocol server, CPU image (tract + ONNX Runtime).
#
#   docker build -t pomme .                      # builds the binary from source (stage `build`)
#   docker build --target prebuilt -t pomme .    # copies target/release/pomme, the binary CI built and tested
#   docker run -p 8000-8002:8000-8002 -v "$PWD/models:/models:ro" pomme
#
# The model repository is a volume (`/models`, `<model>/<version>/model.onnx`); the
# image holds no model. Checked in CI by scripts/validate-deploy.sh (hadolint plus a
# checklist); it has never been built in CI, which has no container engine.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm
ARG ONNXRUNTIME_VERSION=1.31.1

# --- ONNX Runtime's shared library, taken from the same PyPI wheel the tests use.
FROM python:3.11-slim-${DEBIAN_RELEASE} AS onnxruntime
ARG ONNXRUNTIME_VERSION
RUN pip install --no-cache-dir "onnxruntime==${ONNXRUNTIME_VERSION}" \
 && mkdir -p /opt/onnxruntime/lib \
 && cp /usr/local/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so* /opt/onnxruntime/lib/

# --- Build: the same command and features as `cargo build --release -p pomme-cli` in the repository.
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p pomme-cli \
 && ./target/release/pomme infer models/add_one.onnx >/dev/null \
 && cp target/release/pomme /usr/local/bin/pomme

# --- Runtime base: slim Debian, non-root user, ONNX Runtime, curl for the health check.
FROM debian:${DEBIAN_RELEASE}-slim AS base
# Unpinned on purpose: Debian's stable security updates should reach the image on rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pomme \
 && useradd --system --uid 10001 --gid pomme --home-dir /nonexistent --shell /usr/sbin/nologin pomme \
 && mkdir -p /models \
 && chown pomme:pomme /models
COPY --from=onnxruntime /opt/onnxruntime/lib/ /opt/onnxruntime/lib/
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so \
    POMME_MODEL_REPOSITORY=/models \
    POMME_HOST=0.0.0.0 \
    POMME_HTTP_PORT=8000 \
    POMME_GRPC_PORT=8001 \
    POMME_METRICS_PORT=8002 \
    POMME_LOG_FORMAT=json
VOLUME ["/models"]
EXPOSE 8000 8001 8002
# Kubernetes uses its own probes (deploy/); this one serves plain `docker run`. Shell form
# so that any curl failure becomes exit 1, the only "unhealthy" code Docker defines.
# hadolint ignore=DL3025
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/v2/health/ready || exit 1
USER 10001:10001
# SIGTERM makes pomme go not-ready, drain in-flight requests (POMME_SHUTDOWN_GRACE) and exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pomme"]
CMD ["serve"]

# --- `docker build --target prebuilt`: ship the binary CI built and tested
# (target/release/pomme from `cargo build --locked --release -p pomme-cli`).
FROM base AS prebuilt
COPY --chmod=0755 target/release/pomme /usr/local/bin/pomme

# --- Default target: the binary built from source above.
FROM base AS runtime
COPY --from=build /usr/local/bin/pomme /usr/local/bin/pomme
