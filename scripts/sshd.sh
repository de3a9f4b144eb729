#!/usr/bin/env bash
# OpenSSH server on loopback for tests and benchmarks, in its own directory, stopped by PID.
#   scripts/sshd.sh start DIR PORT   → prints user=USER host=127.0.0.1 port=PORT key=DIR/id_ed25519 known_hosts=DIR/known_hosts
#   scripts/sshd.sh stop DIR
#   scripts/sshd.sh info DIR
# DIR gets its own host key, a client key pair (authorized for the running user), sshd_config and a known_hosts
# file with the `[127.0.0.1]:PORT` line; DIR/sshd_config.extra, when present, is appended to the config. Key
# authentication only. Installs openssh-server from apt when missing.
set -euo pipefail
cmd=${1:?usage: sshd.sh start DIR PORT | stop DIR | info DIR}
dir=${2:?DIR required}
SSHD=/usr/sbin/sshd

info() {
  echo "user=$(id -un) host=127.0.0.1 port=$(cat "$dir/port") key=$dir/id_ed25519 known_hosts=$dir/known_hosts"
}
running() { [ -f "$dir/sshd.pid" ] && kill -0 "$(cat "$dir/sshd.pid")" 2>/dev/null; }
answers() { ssh-keyscan -T 2 -t ed25519 -p "$1" 127.0.0.1 2>/dev/null | grep -q ssh-ed25519; }

case "$cmd" in
start)
  port=${3:?PORT required}
  if [ ! -x "$SSHD" ] || ! command -v ssh-keygen >/dev/null 2>&1; then
    echo "installing openssh-server from apt" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server openssh-client >&2
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if running; then info; exit 0; fi
  echo "$port" >"$dir/port"
  [ -f "$dir/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C "timetodo-test-host" -f "$dir/ssh_host_ed25519_key"
  [ -f "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "timetodo-test-client" -f "$dir/id_ed25519"
  chmod 600 "$dir/ssh_host_ed25519_key" "$dir/id_ed25519"
  cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
  chmod 644 "$dir/authorized_keys"
  cat >"$dir/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PrintMotd no
LogLevel VERBOSE
MaxStartups 50:30:100
Subsystem sftp internal-sftp
CONF
  # a test's own settings (e.g. `SetEnv PATH=…` for a host without some tool): DIR/sshd_config.extra, appended
  if [ -f "$dir/sshd_config.extra" ]; then cat "$dir/sshd_config.extra" >>"$dir/sshd_config"; fi
  echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")" >"$dir/known_hosts"
  mkdir -p /run/sshd
  chmod 755 /run/sshd
  "$SSHD" -t -f "$dir/sshd_config" || { echo "sshd_config in $dir is invalid" >&2; exit 1; }
  "$SSHD" -f "$dir/sshd_config" -E "$dir/sshd.log"
  for _ in $(seq 1 100); do
    if running && answers "$port"; then info; exit 0; fi
    sleep 0.05
  done
  echo "sshd did not answer on port $port" >&2; tail -20 "$dir/sshd.log" >&2 || true; exit 1
  ;;
stop)
  if running; then
    pid=$(cat "$dir/sshd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  ;;
info) info ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
