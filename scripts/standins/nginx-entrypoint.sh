#!/bin/sh
# As the official nginx image's entrypoint, for `nginx` commands: each
# /etc/nginx/templates/*.template is rendered with envsubst into conf.d (NGINX_ENVSUBST_*
# settings as there), then the command runs.
set -e
if [ "$1" = nginx ] || [ "$1" = nginx-debug ]; then
  templates="${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}"
  suffix="${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}"
  out="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
  if [ -d "$templates" ] && [ -w "$out" ]; then
    defined="$(printf '${%s} ' $(env | cut -d= -f1))"
    find "$templates" -follow -type f -name "*$suffix" | while read -r template; do
      relative="${template#"$templates"/}"
      target="$out/${relative%"$suffix"}"
      mkdir -p "$(dirname "$target")"
      envsubst "$defined" <"$template" >"$target"
    done
  fi
fi
exec "$@"
