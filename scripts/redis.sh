#!/usr/bin/env bash
# Redis on loopback for tests and benchmarks, in its own directory, stopped by PID.
#   scripts/redis.sh start DIR PORT [PASSWORD]  → prints redis://[:PASSWORD@]127.0.0.1:PORT/0
#   scripts/redis.sh stop DIR
#   scripts/redis.sh url DIR
# Installs redis-server from apt when missing.
set -euo pipefail
cmd=${1:?usage: redis.sh start DIR PORT [PASSWORD] | stop DIR | url DIR}
dir=${2:?DIR required}

url() {
  local pw; pw=$(cat "$dir/password" 2>/dev/null || true)
  if [ -n "$pw" ]; then echo "redis://:$pw@127.0.0.1:$(cat "$dir/port")/0"; else echo "redis://127.0.0.1:$(cat "$dir/port")/0"; fi
}
running() { [ -f "$dir/redis.pid" ] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; }
cli() { local pw; pw=$(cat "$dir/password" 2>/dev/null || true); REDISCLI_AUTH="$pw" redis-cli -h 127.0.0.1 -p "$(cat "$dir/port")" "$@"; }

case "$cmd" in
start)
  port=${3:?PORT required}
  password=${4:-}
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redis-server from apt" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >&2
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if running; then url; exit 0; fi
  echo "$port" >"$dir/port"
  printf '%s' "$password" >"$dir/password"
  chmod 600 "$dir/password"
  args=(--port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir")
  if [ -n "$password" ]; then args+=(--requirepass "$password"); fi
  redis-server "${args[@]}"
  for _ in $(seq 1 100); do
    if [ "$(cli ping 2>/dev/null)" = "PONG" ]; then url; exit 0; fi
    sleep 0.05
  done
  echo "redis did not answer on port $port" >&2; tail -20 "$dir/redis.log" >&2; exit 1
  ;;
stop)
  if running; then
    pid=$(cat "$dir/redis.pid")
    cli shutdown nosave >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  fi
  ;;
url) url ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
