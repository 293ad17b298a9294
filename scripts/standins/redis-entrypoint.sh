#!/bin/sh
# As the official redis image's entrypoint: options alone (`-...` or a `.conf` file) are
# given to redis-server; any other command runs as it is.
set -e
case "$1" in
  -* | *.conf) set -- redis-server "$@" ;;
esac
exec "$@"
