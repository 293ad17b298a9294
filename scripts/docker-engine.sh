#!/usr/bin/env bash
# A Docker engine for `make test-compose`: installs Debian's docker.io when no engine is
# installed, starts dockerd when none answers, and stops only what it started.
#
#   scripts/docker-engine.sh start STATE_DIR   # prints nothing more than what it did
#   scripts/docker-engine.sh stop STATE_DIR    # stops dockerd if `start` started it
#
# Where the engine cannot run (not root, no overlay filesystem, dockerd dies), `start`
# exits 3 with one line saying what is missing.
set -euo pipefail

action="${1:?usage: docker-engine.sh start|stop STATE_DIR}"
state="${2:?usage: docker-engine.sh start|stop STATE_DIR}"
# Debian's client: the static client some machines carry in /usr/local/bin has no buildx
# and cannot drive BuildKit.
DOCKER=/usr/bin/docker

missing() {
  echo "test-compose: cannot run a Docker engine here: $*" >&2
  exit 3
}

engine_answers() { [ -x "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; }

install_engine() {
  [ "$(id -u)" = 0 ] || missing "docker.io is not installed and installing it needs root (sudo apt-get install docker.io)"
  command -v apt-get >/dev/null 2>&1 || missing "docker.io is not installed and there is no apt-get to install it"
  echo "installing docker.io (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
}

start() {
  mkdir -p "$state"
  if engine_answers; then
    echo "docker engine: already running"
    return
  fi
  [ -x /usr/sbin/dockerd ] && [ -x "$DOCKER" ] || install_engine
  [ "$(id -u)" = 0 ] || missing "dockerd is not running and starting it needs root"
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null \
    || missing "the kernel has no overlay filesystem (modprobe overlay failed)"
  echo "starting dockerd (log: $state/dockerd.log)"
  /usr/sbin/dockerd --pidfile "$state/dockerd.pid" >"$state/dockerd.log" 2>&1 &
  echo $! >"$state/started-by-us"
  for _ in $(seq 1 120); do
    engine_answers && return
    kill -0 "$(cat "$state/started-by-us")" 2>/dev/null \
      || missing "dockerd exited: $(tail -n 1 "$state/dockerd.log")"
    sleep 0.5
  done
  missing "dockerd did not answer within 60 s: $(tail -n 1 "$state/dockerd.log")"
}

stop() {
  [ -f "$state/started-by-us" ] || return 0
  pid="$(cat "$state/started-by-us")"
  rm -f "$state/started-by-us"
  echo "stopping the dockerd this run started (pid $pid)"
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -9 "$pid" 2>/dev/null || true
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: docker-engine.sh start|stop STATE_DIR" >&2; exit 2 ;;
esac
