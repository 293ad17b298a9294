#!/usr/bin/env bash
# Installs the system programs the tests start themselves, when missing: redis-server,
# nginx, Chromium for the headless-browser test (Playwright drives the system browser), curl,
# libturbojpeg.
# As root it uses apt-get; otherwise it says what to install and fails: never a silent skip.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)  # the README's examples, run by tests/test_readme.py
# libturbojpeg: detect cuts faces from a JPEG losslessly (tests/common/test_images.py checks it).
case "$(/sbin/ldconfig -p 2>/dev/null)" in *'libturbojpeg.so.0 '*) ;; *) missing+=(libturbojpeg0) ;; esac
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Debian's package starts a server on the default port; the tests start their own.
else
  echo "the tests need: ${missing[*]} (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
