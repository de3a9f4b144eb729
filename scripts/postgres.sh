#!/usr/bin/env bash
# PostgreSQL 15 on loopback for tests and benchmarks, in its own directory, stopped by PID.
#   scripts/postgres.sh start DIR PORT   → prints postgresql://timetodo:timetodo@127.0.0.1:PORT/timetodo
#   scripts/postgres.sh stop DIR
#   scripts/postgres.sh url DIR
# Installs PostgreSQL from apt when missing. Runs as the `postgres` user (initdb refuses root).
set -euo pipefail
cmd=${1:?usage: postgres.sh start DIR PORT | stop DIR | url DIR}
dir=${2:?DIR required}
BIN=/usr/lib/postgresql/15/bin

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
url() { echo "postgresql://timetodo:timetodo@127.0.0.1:$(cat "$dir/port")/timetodo"; }
running() { [ -f "$dir/data/postmaster.pid" ] && kill -0 "$(head -1 "$dir/data/postmaster.pid")" 2>/dev/null; }

case "$cmd" in
start)
  port=${3:?PORT required}
  if [ ! -x "$BIN/initdb" ]; then
    echo "installing PostgreSQL 15 from apt" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib >&2
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  chmod 755 "$dir"
  # the postgres user must be able to reach DIR: open the search bit of private parents (mktemp -d is 0700)
  p=$(dirname "$dir"); while [ "$p" != / ]; do [ -O "$p" ] && chmod a+x "$p"; p=$(dirname "$p"); done
  if running; then url; exit 0; fi
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir"; fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg bash -c "echo timetodo > '$dir/pwfile'"
    as_pg "$BIN/initdb" -D "$dir/data" -U timetodo --pwfile="$dir/pwfile" --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_connections = 300
shared_buffers = 256MB
CONF
    echo "host replication all 127.0.0.1/32 scram-sha-256" >>"$dir/data/pg_hba.conf"
  fi
  echo "$port" >"$dir/port"
  as_pg "$BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "-p $port" -w -t 60 start >&2 \
    || { tail -20 "$dir/postgres.log" >&2; exit 1; }
  as_pg "$BIN/psql" -h "$dir" -p "$port" -U timetodo -d postgres -qtAc \
    "SELECT 1 FROM pg_database WHERE datname='timetodo'" | grep -q 1 \
    || as_pg "$BIN/createdb" -h "$dir" -p "$port" -U timetodo timetodo
  url
  ;;
stop)
  [ -d "$dir/data" ] || exit 0
  if running; then
    as_pg "$BIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >&2 || kill "$(head -1 "$dir/data/postmaster.pid")" 2>/dev/null || true
  fi
  ;;
url) url ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
