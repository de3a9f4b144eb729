#!/usr/bin/env bash
# A real ACME server on loopback for tests: pebble (Let's Encrypt's test CA) + pebble-challtestsrv (a DNS server
# answering every name with 127.0.0.1), in their own directory, stopped by PID.
#   scripts/pebble.sh start DIR HTTP_PORT   → prints the ACME directory URL; DIR/ca.pem verifies pebble's API,
#                                             DIR/mgmt_url is the management API (its /roots/0 = the issuing root)
#   scripts/pebble.sh stop DIR
# HTTP_PORT is where pebble's validator connects for HTTP-01 (the "port 80" of the names it checks).
# Installs pebble and openssl from apt when missing.
set -euo pipefail
cmd=${1:?usage: pebble.sh start DIR HTTP_PORT | stop DIR}
dir=${2:?DIR required}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
running() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

case "$cmd" in
start)
  http_port=${3:?HTTP_PORT required}
  if ! command -v pebble >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
    echo "installing pebble from apt" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pebble openssl >&2
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  api=$(free_port); mgmt=$(free_port); dns=$(free_port); dns_mgmt=$(free_port); tls=$(free_port)
  # pebble serves its API over TLS: a certificate of its own for localhost / 127.0.0.1
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pebble" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$dir/key.pem" -out "$dir/ca.pem" >/dev/null 2>&1
  chmod 600 "$dir/key.pem"
  cat >"$dir/pebble.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$api", "managementListenAddress": "127.0.0.1:$mgmt",
            "certificate": "$dir/ca.pem", "privateKey": "$dir/key.pem",
            "httpPort": $http_port, "tlsPort": $tls, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
  pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" -dns01 "127.0.0.1:$dns" -http01 "" -https01 "" \
    -tlsalpn01 "" -management "127.0.0.1:$dns_mgmt" >"$dir/challtestsrv.log" 2>&1 &
  echo $! >"$dir/challtestsrv.pid"
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 pebble -config "$dir/pebble.json" -dnsserver "127.0.0.1:$dns" \
    >"$dir/pebble.log" 2>&1 &
  echo $! >"$dir/pebble.pid"
  echo "http://127.0.0.1:$dns_mgmt" >"$dir/dns_mgmt_url"
  echo "https://127.0.0.1:$mgmt" >"$dir/mgmt_url"
  for _ in $(seq 1 200); do
    if curl -fsS --cacert "$dir/ca.pem" "https://127.0.0.1:$api/dir" >/dev/null 2>&1; then
      echo "https://127.0.0.1:$api/dir"; exit 0
    fi
    sleep 0.05
  done
  echo "pebble did not start:" >&2; cat "$dir/pebble.log" "$dir/challtestsrv.log" >&2; exit 1
  ;;
stop)
  for name in pebble challtestsrv; do
    if running "$name"; then kill "$(cat "$dir/$name.pid")"; fi
    rm -f "$dir/$name.pid"
  done
  ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
