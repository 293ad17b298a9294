#!/usr/bin/env bash
# make test-compose: build the images and run the compose stack for real.
#   1. a Docker engine (scripts/docker-engine.sh: installs docker.io, starts dockerd when
#      needed, and stops at the end only what it started);
#   2. stand-ins for base images no registry here serves (scripts/standin-images.sh);
#   3. tests/deploy/compose: the CPU image from the real Dockerfile, the real
#      docker-compose.yml, its promises and its faults.
# Where no engine can run it stops with one line saying what is missing (exit 3); it never
# passes without having run the stack.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${RUN:-uv run --no-sync}"
state="${FACESCORE_ENGINE_STATE:-$PWD/data/docker-engine}"
export DOCKER=/usr/bin/docker DOCKER_BUILDKIT=1

started=$SECONDS
scripts/docker-engine.sh start "$state"
trap 'scripts/docker-engine.sh stop "$state"' EXIT
echo "phase docker engine: $((SECONDS - started)) s"

started=$SECONDS
nice -n 10 scripts/standin-images.sh
echo "phase stand-in images: $((SECONDS - started)) s"

started=$SECONDS
$RUN pytest -m compose tests/deploy/compose -s -p no:cacheprovider --timeout=1200
echo "phase compose tests: $((SECONDS - started)) s"
