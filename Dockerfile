# syntax=docker/dockerfile:1
#
# varserve container images.
#
#   docker build -t varserve .                    # GPU image (CUDA runtime, Ubuntu 22.04): the default target
#   docker build -t varserve:cpu --target cpu .   # CPU-only image (Debian 12 slim)
#
#   docker run --rm --gpus all -p 8080:8080 varserve
#   docker run --rm -p 8080:8080 varserve:cpu
#
# Both build stages run the README's own build steps, `make deps && make`: deps installs the
# Debian/Ubuntu packages with apt-get (the stage runs as root), and make builds build/varserve
# (with the CUDA backend when nvcc is found, as it is in the CUDA devel image).
#
# The runtime stages run as a non-root user (uid 10001), serve the bundled model
# models/mnist-var.safetensors from /opt/varserve, and are configured by VARSERVE_<KEY>
# environment variables (`varserve serve --help` lists every key) or a config file named by
# VARSERVE_CONFIG. varserve is PID 1 (exec-form ENTRYPOINT, no shell): on SIGTERM it turns /ready
# to 503, finishes accepted requests within drain_timeout_s (default 30 s), answers what is left
# with 503 within 10 s more, and exits 0; give `docker stop` that long: `docker stop -t 45`.

ARG CUDA_VERSION=12.6.3
ARG UBUNTU_VERSION=22.04
ARG DEBIAN_IMAGE=debian:12-slim

# --------------------------------------------------------------------------------------------
# CPU-only: build on Debian 12 (no nvcc there, so make builds the CPU backend alone)
# --------------------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS cpu-build
ARG DEBIAN_FRONTEND=noninteractive
# make itself, so that `make deps` can run
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# dependencies first: this layer is rebuilt only when the Makefile or the package list changes
COPY Makefile ./
COPY tools/deps.sh tools/
RUN make deps
COPY . .
# the model the image serves; build with --build-arg MODEL_FILE= to ship none and mount one
ARG MODEL_FILE=models/mnist-var.safetensors
RUN mkdir -p models \
 && if [ -n "$MODEL_FILE" ] && [ ! -f "$MODEL_FILE" ]; then \
      echo "varserve: $MODEL_FILE is not in the build context; add it, or build with --build-arg MODEL_FILE= and mount a model at run time" >&2; \
      exit 1; \
    fi
RUN make

FROM ${DEBIAN_IMAGE} AS cpu
ARG DEBIAN_FRONTEND=noninteractive
# the shared libraries build/varserve links (OpenBLAS, libmicrohttpd, cJSON, libpng), and curl
# for HEALTHCHECK
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libopenblas0-pthread libmicrohttpd12 libcjson1 libpng16-16 curl \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 varserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /opt/varserve --no-create-home \
      --shell /usr/sbin/nologin varserve
WORKDIR /opt/varserve
COPY --from=cpu-build /src/build/varserve /usr/local/bin/varserve
COPY --from=cpu-build /src/config/varserve.json /opt/varserve/config/varserve.json
COPY --from=cpu-build /src/models/ /opt/varserve/models/
# fail the build here, not at run time, when a shared library is missing
RUN ! ldd /usr/local/bin/varserve | grep 'not found' \
 && /usr/local/bin/varserve serve --print-config >/dev/null
# the container listens on every address; the config file's other keys, and these, can be
# changed with -e VARSERVE_<KEY>=value (environment beats the config file, flags beat both)
ENV VARSERVE_HOST=0.0.0.0 \
    VARSERVE_PORT=8080
USER 10001:10001
EXPOSE 8080
# /ready: 200 once the model is loaded, 503 while loading or draining
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD curl -fsS -o /dev/null "http://127.0.0.1:${VARSERVE_PORT}/ready" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/varserve"]
CMD ["serve"]

# --------------------------------------------------------------------------------------------
# GPU: build in the CUDA devel image (nvcc present, so make builds the CUDA backend too)
# --------------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS gpu-build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY tools/deps.sh tools/
RUN make deps
COPY . .
ARG MODEL_FILE=models/mnist-var.safetensors
RUN mkdir -p models \
 && if [ -n "$MODEL_FILE" ] && [ ! -f "$MODEL_FILE" ]; then \
      echo "varserve: $MODEL_FILE is not in the build context; add it, or build with --build-arg MODEL_FILE= and mount a model at run time" >&2; \
      exit 1; \
    fi
RUN make

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS gpu
ARG DEBIAN_FRONTEND=noninteractive
# the CUDA runtime image brings libcudart and cuBLAS; add what build/varserve links besides
# (Ubuntu 22.04 package names) and curl for HEALTHCHECK
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libopenblas0-pthread libmicrohttpd12 libcjson1 libpng16-16 curl \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 varserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /opt/varserve --no-create-home \
      --shell /usr/sbin/nologin varserve
WORKDIR /opt/varserve
COPY --from=gpu-build /src/build/varserve /usr/local/bin/varserve
COPY --from=gpu-build /src/config/varserve.json /opt/varserve/config/varserve.json
COPY --from=gpu-build /src/models/ /opt/varserve/models/
# libcuda.so.1 comes from the host driver at run time (the NVIDIA container toolkit mounts it);
# build/varserve links only libcudart and cuBLAS, so ldd resolves everything without a GPU
RUN ! ldd /usr/local/bin/varserve | grep 'not found' \
 && /usr/local/bin/varserve serve --print-config >/dev/null
# backend stays "auto": CUDA when a GPU answers, else the CPU backend
ENV VARSERVE_HOST=0.0.0.0 \
    VARSERVE_PORT=8080
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD curl -fsS -o /dev/null "http://127.0.0.1:${VARSERVE_PORT}/ready" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/varserve"]
CMD ["serve"]
