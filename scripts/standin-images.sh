#!/usr/bin/env bash
# Local stand-ins for the base images that `make test-compose` needs when no image registry
# is reachable. Each is built only when its name is not already present, so a real image
# (pulled, or loaded from a registry you control) is never replaced. Stand-ins carry the
# label org.facescore.stand-in; the last lines printed name them.
#
#   scripts/standin-images.sh            # DOCKER=/usr/bin/docker; needs root for debootstrap
#
#   python:3.11.15-slim-bookworm   a debootstrap bookworm root with Debian's python3.11 linked
#                                  at /usr/local/bin, as the official image lays it out
#   ghcr.io/astral-sh/uv:0.13.9    /uv and /uvx from uv's PyPI wheel
#   nginx:1.27.5-alpine            Debian's nginx: user nginx (101), /etc/nginx, the official
#                                  entrypoint's templating (/etc/nginx/templates/*.template)
#   redis:7.4.6-alpine             Debian's redis-server: user redis (999:1000), /data
#
# The bookworm root is cached in FACESCORE_STANDIN_CACHE (default ~/.cache/facescore-standins).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER="${DOCKER:-/usr/bin/docker}"
export DOCKER_BUILDKIT=1
CACHE="${FACESCORE_STANDIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/facescore-standins}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
LABEL=org.facescore.stand-in
BASE=facescore-standin/bookworm:12
PYTHON_IMAGE=python:3.11.15-slim-bookworm
UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
NGINX_IMAGE=nginx:1.27.5-alpine
REDIS_IMAGE=redis:7.4.6-alpine

present() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# A minimal bookworm root, imported once; the other stand-ins are built on it.
bookworm_base() {
  present "$BASE" && return
  mkdir -p "$CACHE"
  local tarball="$CACHE/bookworm-minbase.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null 2>&1 || {
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    local root
    root="$(mktemp -d)"
    echo "debootstrap bookworm (minbase) from $MIRROR"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -n 5 "$CACHE/debootstrap.log" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$root"
  fi
  "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL $LABEL=debootstrap-bookworm" \
    --change 'CMD ["bash"]' \
    "$tarball" "$BASE" >/dev/null
}

# docker build of scripts/standins/<name>.Dockerfile on the bookworm base; apt reaches
# Debian's mirror through the host's network.
build_on_base() {
  local image="$1" dockerfile="$2"
  present "$image" && return
  bookworm_base
  echo "building stand-in $image"
  "$DOCKER" build --quiet --network host --build-arg "BASE=$BASE" --label "$LABEL=$dockerfile" \
    -f "scripts/standins/$dockerfile" -t "$image" scripts/standins >/dev/null
}

uv_image() {
  present "$UV_IMAGE" && return
  local version="${UV_IMAGE##*:}" work
  work="$(mktemp -d)"
  echo "building stand-in $UV_IMAGE from uv's PyPI wheel"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" "uv==$version"
  (cd "$work" && python3 -m zipfile -e uv-*.whl wheel)
  install -m 0755 "$work"/wheel/uv-"$version".data/scripts/uv "$work"/wheel/uv-"$version".data/scripts/uvx "$work"/
  tar -C "$work" -cf - uv uvx | "$DOCKER" import --change "LABEL $LABEL=pypi-uv-wheel" \
    --change 'ENTRYPOINT ["/uv"]' - "$UV_IMAGE" >/dev/null
  rm -rf "$work"
}

build_on_base "$PYTHON_IMAGE" python.Dockerfile
uv_image
build_on_base "$NGINX_IMAGE" nginx.Dockerfile
build_on_base "$REDIS_IMAGE" redis.Dockerfile

for image in "$PYTHON_IMAGE" "$UV_IMAGE" "$NGINX_IMAGE" "$REDIS_IMAGE"; do
  kind="$("$DOCKER" image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$image")"
  if [ -n "$kind" ]; then
    echo "stand-in  $image  (local build: $kind)"
  else
    echo "real      $image"
  fi
done
