#!/usr/bin/env bash
# `make down`: stop what `make up` started (the private supervisord and every zonefarm service under it).
set -euo pipefail
cd "$(dirname "$0")/.."
VAR=${VAR:-$PWD/var}
ROOT=${ZONEFARM_LOCAL_ROOT:-$VAR/local}
CONF="$ROOT/supervisor/supervisord.conf"
if [ ! -f "$CONF" ]; then
  echo "down: nothing deployed under $ROOT"
  exit 0
fi
if supervisorctl -c "$CONF" pid >/dev/null 2>&1; then
  supervisorctl -c "$CONF" stop all
  supervisorctl -c "$CONF" shutdown
  # supervisord exits once its programs are down; wait for the pid file to go.
  for _ in $(seq 1 30); do [ -e "$ROOT/supervisor/supervisord.pid" ] || break; sleep 1; done
  echo "down: stopped the services under $ROOT"
else
  echo "down: supervisord under $ROOT is not running"
fi
