#!/usr/bin/env bash
# Makes a self-signed TLS certificate and key for local HTTPS (localhost, 127.0.0.1, ::1).
#   scripts/dev-cert.sh [DIR]    writes DIR/cert.pem and DIR/key.pem (default: nginx/certs)
# For development and tests only: browsers warn until you trust DIR/cert.pem yourself.
# Existing files are replaced. Needs openssl (Debian: apt-get install openssl).
set -euo pipefail
dir="${1:-$(cd "$(dirname "$0")/.." && pwd)/nginx/certs}"
command -v openssl >/dev/null 2>&1 || {
  echo "dev-cert.sh needs openssl (Debian/Ubuntu: sudo apt-get install openssl)" >&2
  exit 1
}
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
  -days 825 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "keyUsage=critical,digitalSignature" \
  -addext "extendedKeyUsage=serverAuth" \
  -keyout "$dir/key.pem.partial" -out "$dir/cert.pem.partial"
# nginx in docker-compose.yml runs as uid 101 (the nginx image's user) and must read the key
# without a manual chown: run as root, the key goes to 101 (mode 600); otherwise it is made
# readable (mode 644: a self-signed key for localhost, for development only).
chmod 755 "$dir"
if [ "$(id -u)" = 0 ]; then
  chown 101:101 "$dir/key.pem.partial"
  chmod 600 "$dir/key.pem.partial"
else
  chmod 644 "$dir/key.pem.partial"
fi
chmod 644 "$dir/cert.pem.partial"
mv -f "$dir/key.pem.partial" "$dir/key.pem"
mv -f "$dir/cert.pem.partial" "$dir/cert.pem"
echo "wrote $dir/cert.pem and $dir/key.pem (self-signed for localhost, 825 days)"
