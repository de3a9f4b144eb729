#!/usr/bin/env bash
# timetodo migrate prepare: idempotent host setup for Ubuntu 22.04 / Debian 12 (rendered by timetodo.ops.migrate.prepare).
# Checks each item, changes only what is missing, prints one line per item on stdout:
#   PREPARE <item> ok|changed|failed <detail>     and then     CHECK <item> ok|failed <detail>
# Tool output goes to stderr. Exit status 1 when any item failed. Run as root: bash -s < script (or sudo bash -s).
# The whole script is one block, so bash has read all of it before a command (apt-get, ...) could eat stdin.
{
set -u
exec </dev/null
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
umask 022

@PARAMETERS@

# For tests only (empty on a real host): prefixed to every file path read or written below.
R=${TTD_PREPARE_ROOT:-}
OS_RELEASE=$R/etc/os-release
KEYRING_DIR=$R/etc/apt/keyrings
KEYRING=$KEYRING_DIR/docker.asc
DOCKER_LIST=$R/etc/apt/sources.list.d/docker.list
AUTO_UPGRADES=$R/etc/apt/apt.conf.d/20auto-upgrades
JAIL=$R/etc/fail2ban/jail.d/timetodo-sshd.local
FSTAB=$R/etc/fstab
SWAPFILE=$R/swapfile
APP_DIR=$R$APP_DIR_PATH

JAIL_TEXT="# written by timetodo migrate prepare
[sshd]
enabled = true
port = $SSH_PORT
backend = systemd"
AUTO_UPGRADES_TEXT='APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";'

FAILED=0
ERR=""
DID=""
APT_UPDATED=0
OS_ID=""
OS_CODENAME=""
RAM_MB=""
OUT=$(mktemp 2>/dev/null || echo "/tmp/ttd-prepare.$$")
trap 'rm -f "$OUT"' EXIT

# say PHASE ITEM STATUS DETAIL: the one line per item (detail on one line)
say() {
  local detail
  detail=$(printf '%s' "$4" | tr '\n\t' '  ' | cut -c1-400)
  printf '%s %s %s %s\n' "$1" "$2" "$3" "$detail"
  if [ "$3" = failed ]; then FAILED=$((FAILED + 1)); fi
  return 0
}
did() { DID="${DID:+$DID; }$*"; }
item_done() {  # ITEM OK_DETAIL
  if [ -n "$DID" ]; then say PREPARE "$1" changed "$DID"; else say PREPARE "$1" ok "$2"; fi
  DID=""
}
item_failed() {  # ITEM DETAIL
  say PREPARE "$1" failed "$2${DID:+ (done before: $DID)}"
  DID=""
}

# change CMD...: run a command that changes the host, its output to stderr; on failure ERR names it
change() {
  local rc
  echo "+ $*" >&2
  "$@" >"$OUT" 2>&1
  rc=$?
  cat "$OUT" >&2
  if [ "$rc" -ne 0 ]; then
    ERR="'$*' exited $rc: $(tail -n 3 "$OUT" | tr '\n' ' ' | cut -c1-300)"
  fi
  return "$rc"
}
# shellcheck disable=SC2317  # called through change()
write_file() {  # PATH TEXT: atomically, with a final newline
  mkdir -p "$(dirname "$1")" && printf '%s\n' "$2" >"$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"
}
# shellcheck disable=SC2317  # called through change()
append_line() {  # PATH LINE
  mkdir -p "$(dirname "$1")" && printf '%s\n' "$2" >>"$1"
}
file_is() {  # PATH TEXT: the file holds exactly TEXT (plus the final newline)
  [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]
}
installed() {  # PKG...: all of them installed
  local n
  n=$(dpkg -s "$@" 2>/dev/null | grep -c '^Status: install ok installed$')
  [ "$n" -eq "$#" ]
}
apt_install() {  # PKG...
  if [ "$APT_UPDATED" -eq 0 ]; then
    change apt-get -o DPkg::Lock::Timeout=300 update -qq || return 1
    APT_UPDATED=1
  fi
  change apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}
os_field() {  # NAME: a value of /etc/os-release without quotes (parsed, never sourced)
  sed -n "s/^$1=//p" "$OS_RELEASE" | head -n 1 | tr -d "\"'"
}
service_up() {  # ITEM UNIT: enabled at boot and running
  if ! systemctl is-enabled --quiet "$2"; then
    change systemctl enable "$2" || return 1
    did "enabled $2 at boot"
  fi
  if ! systemctl is-active --quiet "$2"; then
    change systemctl start "$2" || return 1
    did "started $2"
  fi
}

# ----------------------------------------------------------------------------------------------------- items

if [ "$(id -u)" != 0 ]; then
  say PREPARE root failed "must run as root (the SSH user needs passwordless sudo)"
  exit 1
fi

item_os() {
  local version
  if [ ! -r "$OS_RELEASE" ]; then item_failed os "cannot read $OS_RELEASE"; return; fi
  OS_ID=$(os_field ID)
  version=$(os_field VERSION_ID)
  OS_CODENAME=$(os_field VERSION_CODENAME)
  [ -n "$OS_CODENAME" ] || OS_CODENAME=$(os_field UBUNTU_CODENAME)
  case "$OS_ID" in
    ubuntu | debian) ;;
    *) OS_CODENAME=""; item_failed os "unsupported distribution '${OS_ID:-?}' (Ubuntu 22.04 or Debian 12 expected)"; return ;;
  esac
  if [ -z "$OS_CODENAME" ]; then item_failed os "no VERSION_CODENAME in $OS_RELEASE"; return; fi
  item_done os "$OS_ID $version ($OS_CODENAME)"
}

item_docker_repo() {
  local arch line
  if [ -z "$OS_CODENAME" ]; then item_failed docker-repo "skipped: the distribution is not supported"; return; fi
  if ! installed ca-certificates curl; then
    apt_install ca-certificates curl || { item_failed docker-repo "$ERR"; return; }
    did "installed ca-certificates curl"
  fi
  if [ ! -d "$KEYRING_DIR" ]; then
    change install -m 0755 -d "$KEYRING_DIR" || { item_failed docker-repo "$ERR"; return; }
    did "created $KEYRING_DIR"
  fi
  if [ ! -s "$KEYRING" ]; then
    change curl -fsSL --retry 3 "https://download.docker.com/linux/$OS_ID/gpg" -o "$KEYRING" ||
      { rm -f "$KEYRING"; item_failed docker-repo "$ERR"; return; }
    change chmod a+r "$KEYRING" || { item_failed docker-repo "$ERR"; return; }
    did "downloaded Docker's apt key to $KEYRING"
  fi
  arch=$(dpkg --print-architecture)
  line="deb [arch=$arch signed-by=$KEYRING] https://download.docker.com/linux/$OS_ID $OS_CODENAME stable"
  if ! file_is "$DOCKER_LIST" "$line"; then
    change write_file "$DOCKER_LIST" "$line" || { item_failed docker-repo "$ERR"; return; }
    APT_UPDATED=0
    did "wrote $DOCKER_LIST"
  fi
  item_done docker-repo "download.docker.com/linux/$OS_ID $OS_CODENAME stable ($arch)"
}

item_docker() {
  local pkg conflicts=""
  if ! installed "${DOCKER_PKGS[@]}"; then
    for pkg in "${DOCKER_CONFLICTS[@]}"; do
      if installed "$pkg"; then conflicts="$conflicts $pkg"; fi
    done
    if [ -n "$conflicts" ]; then
      item_failed docker "distribution packages conflict with Docker CE:$conflicts; remove them first (apt-get remove$conflicts)"
      return
    fi
    apt_install "${DOCKER_PKGS[@]}" || { item_failed docker "$ERR"; return; }
    did "installed ${DOCKER_PKGS[*]}"
  fi
  service_up docker docker || { item_failed docker "$ERR"; return; }
  item_done docker "Docker CE and the compose plugin installed; docker running"
}

item_deploy_user() {
  local members
  if ! getent passwd "$DEPLOY_USER" >/dev/null; then
    change useradd --create-home --user-group --shell /bin/bash "$DEPLOY_USER" || { item_failed deploy-user "$ERR"; return; }
    did "created user $DEPLOY_USER"
  fi
  if ! members=$(getent group docker); then
    item_failed deploy-user "no docker group (Docker is not installed)"
    return
  fi
  if ! printf '%s\n' "${members##*:}" | tr ',' '\n' | grep -qxF "$DEPLOY_USER"; then
    change usermod -aG docker "$DEPLOY_USER" || { item_failed deploy-user "$ERR"; return; }
    did "added $DEPLOY_USER to the docker group"
  fi
  item_done deploy-user "$DEPLOY_USER exists and is in the docker group"
}

item_app_dir() {
  if [ ! -d "$APP_DIR" ]; then
    change mkdir -p "$APP_DIR" || { item_failed app-dir "$ERR"; return; }
    did "created $APP_DIR"
  fi
  if [ "$(stat -c %U "$APP_DIR")" != "$DEPLOY_USER" ]; then
    change chown "$DEPLOY_USER:" "$APP_DIR" || { item_failed app-dir "$ERR"; return; }
    did "owner set to $DEPLOY_USER"
  fi
  if [ "$(stat -c %a "$APP_DIR")" != 750 ]; then
    change chmod 0750 "$APP_DIR" || { item_failed app-dir "$ERR"; return; }
    did "mode set to 0750"
  fi
  item_done app-dir "$APP_DIR owned by $DEPLOY_USER, mode 0750"
}

item_ufw() {
  local status added port
  if ! installed ufw; then
    apt_install ufw || { item_failed ufw "$ERR"; return; }
    did "installed ufw"
  fi
  added=$(ufw show added 2>&1)
  # the SSH port first, so enabling the firewall can never lock this session out
  for port in "$SSH_PORT" 80 443; do
    if ! printf '%s\n' "$added" | grep -qxF "ufw allow $port/tcp"; then
      change ufw allow "$port/tcp" || { item_failed ufw "$ERR"; return; }
      did "allowed $port/tcp"
    fi
  done
  # `ufw status verbose` shows the default policy only while ufw is active: an inactive ufw gets it set
  status=$(ufw status verbose 2>&1)
  if ! printf '%s\n' "$status" | grep -q 'deny (incoming)'; then
    change ufw default deny incoming || { item_failed ufw "$ERR"; return; }
    did "default deny incoming"
  fi
  if ! printf '%s\n' "$status" | grep -q '^Status: active'; then
    change ufw --force enable || { item_failed ufw "$ERR"; return; }
    did "enabled"
  fi
  item_done ufw "active, default deny incoming, $SSH_PORT/tcp 80/tcp 443/tcp allowed"
}

item_swap() {
  local active mode
  if [ -z "$RAM_MB" ]; then item_failed swap "cannot read the RAM size (free -m)"; return; fi
  if [ "$RAM_MB" -ge "$MIN_RAM_MB" ]; then
    item_done swap "RAM ${RAM_MB} MB >= $MIN_RAM_MB MB: no swap needed"
    return
  fi
  active=$(swapon --show=NAME --noheadings 2>/dev/null)
  if [ -n "$active" ] && ! printf '%s\n' "$active" | grep -qxF "$SWAPFILE"; then
    item_done swap "RAM ${RAM_MB} MB; swap already active: $(printf '%s' "$active" | tr '\n' ' ')"
    return
  fi
  if [ -z "$active" ]; then
    if [ ! -f "$SWAPFILE" ]; then
      if ! change fallocate -l "${SWAP_MB}M" "$SWAPFILE"; then
        rm -f "$SWAPFILE"
        change dd if=/dev/zero of="$SWAPFILE" bs=1M count="$SWAP_MB" || { rm -f "$SWAPFILE"; item_failed swap "$ERR"; return; }
      fi
      did "created $SWAPFILE (${SWAP_MB} MB)"
    fi
  fi
  mode=$(stat -c %a "$SWAPFILE")
  if [ "$mode" != 600 ]; then
    change chmod 600 "$SWAPFILE" || { item_failed swap "$ERR"; return; }
    did "mode 0600"
  fi
  if [ -z "$active" ]; then
    change mkswap "$SWAPFILE" || { item_failed swap "$ERR"; return; }
    change swapon "$SWAPFILE" || { item_failed swap "$ERR"; return; }
    did "swap on"
  fi
  if ! awk -v f="$SWAPFILE" '$1 == f && $3 == "swap" { found = 1 } END { exit !found }' "$FSTAB" 2>/dev/null; then
    change append_line "$FSTAB" "$SWAPFILE none swap sw 0 0" || { item_failed swap "$ERR"; return; }
    did "added to $FSTAB"
  fi
  item_done swap "RAM ${RAM_MB} MB < $MIN_RAM_MB MB: $SWAPFILE active and in $FSTAB"
}

item_fail2ban() {
  local wrote=0
  if ! installed fail2ban python3-systemd; then
    apt_install fail2ban python3-systemd || { item_failed fail2ban "$ERR"; return; }
    did "installed fail2ban"
  fi
  if ! file_is "$JAIL" "$JAIL_TEXT"; then
    change write_file "$JAIL" "$JAIL_TEXT" || { item_failed fail2ban "$ERR"; return; }
    did "wrote $JAIL"
    wrote=1
  fi
  if [ "$wrote" -eq 1 ] && systemctl is-active --quiet fail2ban; then
    change systemctl restart fail2ban || { item_failed fail2ban "$ERR"; return; }
    did "restarted fail2ban"
  fi
  service_up fail2ban fail2ban || { item_failed fail2ban "$ERR"; return; }
  item_done fail2ban "running, sshd jail enabled on port $SSH_PORT"
}

item_unattended_upgrades() {
  if ! installed unattended-upgrades; then
    apt_install unattended-upgrades || { item_failed unattended-upgrades "$ERR"; return; }
    did "installed unattended-upgrades"
  fi
  if ! file_is "$AUTO_UPGRADES" "$AUTO_UPGRADES_TEXT"; then
    change write_file "$AUTO_UPGRADES" "$AUTO_UPGRADES_TEXT" || { item_failed unattended-upgrades "$ERR"; return; }
    did "wrote $AUTO_UPGRADES"
  fi
  item_done unattended-upgrades "enabled (daily package lists and security upgrades)"
}

RAM_MB=$(free -m 2>/dev/null | awk '/^Mem:/ { print $2 }')
item_os
item_docker_repo
item_docker
item_deploy_user
item_app_dir
item_ufw
item_swap
item_fail2ban
item_unattended_upgrades

# ------------------------------------------------------------------------------------------------ self-check

check_docker() {
  local out
  if out=$(docker version --format '{{.Server.Version}}' 2>&1); then
    say CHECK docker ok "engine $out"
  else
    say CHECK docker failed "docker version: $(printf '%s' "$out" | tail -n 2)"
  fi
  if out=$(docker compose version --short 2>&1); then
    say CHECK compose ok "docker compose $out"
  else
    say CHECK compose failed "docker compose version: $(printf '%s' "$out" | tail -n 2)"
  fi
}

check_ufw() {
  local status allowed want extra="" missing="" port
  if ! status=$(ufw status verbose 2>&1); then
    say CHECK ufw failed "ufw status: $(printf '%s' "$status" | tail -n 1)"
    return
  fi
  if ! printf '%s\n' "$status" | grep -q '^Status: active'; then say CHECK ufw failed "ufw is not active"; return; fi
  if ! printf '%s\n' "$status" | grep -q 'deny (incoming)'; then
    say CHECK ufw failed "the default incoming policy is not deny"
    return
  fi
  allowed=$(printf '%s\n' "$status" | awk '/ (ALLOW|LIMIT) / { print $1 }' | sed 's#/.*##' | sort -u)
  want=$(printf '%s\n' "$SSH_PORT" 80 443 | sort -u)
  for port in $allowed; do
    printf '%s\n' "$want" | grep -qxF "$port" || extra="$extra $port"
  done
  for port in $want; do
    printf '%s\n' "$allowed" | grep -qxF "$port" || missing="$missing $port"
  done
  if [ -n "$extra$missing" ]; then
    say CHECK ufw failed "active, but${extra:+ also open:$extra (ufw status numbered; ufw delete N)}${missing:+ not open:$missing}"
  else
    say CHECK ufw ok "active, deny incoming, open: $(printf '%s' "$want" | tr '\n' ' ')"
  fi
}

check_db_ports() {
  local listening public published=""
  if ! listening=$(ss -ltnH 2>&1); then
    say CHECK db-ports failed "ss -ltnH: $(printf '%s' "$listening" | tail -n 1)"
    return
  fi
  public=$(printf '%s\n' "$listening" | awk '{ print $4 }' | grep -E "^(0\.0\.0\.0|\*|\[::\]):($DB_PORTS_RE)\$" | sort -u | tr '\n' ' ')
  if command -v docker >/dev/null 2>&1; then
    published=$(docker ps --format '{{.Names}} {{.Ports}}' 2>/dev/null |
      grep -E "(0\.0\.0\.0|\[?::\]?):($DB_PORTS_RE)->" | awk '{ print $1 }' | tr '\n' ' ')
  fi
  if [ -n "$public$published" ]; then
    say CHECK db-ports failed "listening on all interfaces: ${public}${published:+published by containers: $published}(bind PostgreSQL/Redis to 127.0.0.1 or the internal network)"
  else
    say CHECK db-ports ok "nothing listens on 0.0.0.0 or [::] port 5432 or 6379"
  fi
}

check_swap() {
  local active
  if [ -z "$RAM_MB" ]; then say CHECK swap failed "cannot read the RAM size (free -m)"; return; fi
  if [ "$RAM_MB" -ge "$MIN_RAM_MB" ]; then say CHECK swap ok "not needed (RAM ${RAM_MB} MB)"; return; fi
  active=$(swapon --show=NAME --noheadings 2>/dev/null | tr '\n' ' ')
  if [ -n "$active" ]; then
    say CHECK swap ok "active: $active(RAM ${RAM_MB} MB)"
  else
    say CHECK swap failed "no swap active and RAM is ${RAM_MB} MB < $MIN_RAM_MB MB"
  fi
}

check_fail2ban() {
  if ! systemctl is-active --quiet fail2ban; then say CHECK fail2ban failed "fail2ban is not running"; return; fi
  if ! fail2ban-client status sshd >/dev/null 2>&1; then
    say CHECK fail2ban failed "fail2ban runs but the sshd jail is not active (fail2ban-client status sshd)"
    return
  fi
  say CHECK fail2ban ok "running, sshd jail active"
}

check_docker
check_ufw
check_db_ports
check_swap
check_fail2ban

if [ "$FAILED" -gt 0 ]; then
  echo "prepare: $FAILED item(s) failed" >&2
  exit 1
fi
exit 0
}
