#!/usr/bin/env bash
# timetodo migrate prepare: idempotent host setup for Ubuntu 22.04 / Debian 12 (rendered by timetodo.ops.migrate.prepare).
# Checks each item, changes only what is missing, prints one line per item on stdout:
#   PREPARE <item> ok|changed|failed|skipped (<why>) <detail>     and then     CHECK <item> ok|failed|skipped (<why>) <detail>
# `skipped (no systemd)`: the host has no running systemd, so units cannot be enabled or started (a chroot, a
# container); `skipped (container)`: the kernel is not this host's own (swapon, loading firewall rules). A skipped
# item is never reported `ok`. Tool output goes to stderr. Exit status 1 when any item failed.
# Run as root: bash -s < script (or sudo bash -s).
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
SSHD_CONFIG=$R/etc/ssh/sshd_config
# 10-: sorts before cloud images' 50-cloud-init.conf (which may say PasswordAuthentication yes); sshd keeps the
# first value it reads for each keyword.
SSHD_DROPIN=$R/etc/ssh/sshd_config.d/10-timetodo.conf
UFW_DEFAULTS=$R/etc/default/ufw
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
SSHD_TEXT="# written by timetodo migrate prepare: keys only, root only with a key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PubkeyAuthentication yes
X11Forwarding no
MaxAuthTries 4
LoginGraceTime 30"

FAILED=0
ERR=""
DID=""
APT_UPDATED=0
OS_ID=""
OS_CODENAME=""
RAM_MB=""
SWAP_NEEDED=0
JAIL_CHANGED=0
SSHD_CHANGED=0
FAILED_BEFORE=0
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
apt_update() {
  if [ "$APT_UPDATED" -eq 0 ]; then
    change apt-get -o DPkg::Lock::Timeout=300 update -qq || return 1
    APT_UPDATED=1
  fi
}
apt_install() {  # PKG...
  apt_update || return 1
  change apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}
candidate() {  # PKG: the version apt would install, empty when none
  apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '^(none)$' | head -n 1
}
os_field() {  # NAME: a value of /etc/os-release without quotes (parsed, never sourced)
  sed -n "s/^$1=//p" "$OS_RELEASE" | head -n 1 | tr -d "\"'"
}
service_up() {  # UNIT: enabled at boot and running
  if ! systemctl is-enabled --quiet "$1"; then
    change systemctl enable "$1" || return 1
    did "enabled $1 at boot"
  fi
  if ! systemctl is-active --quiet "$1"; then
    change systemctl start "$1" || return 1
    did "started $1"
  fi
}
service_item() {  # ITEM UNIT [reload|restart]: the unit enabled and running (reloaded when its config changed)
  if [ "$FAILED" -gt "$FAILED_BEFORE" ]; then
    say PREPARE "$1" failed "$2 not started: the item before failed"
    return
  fi
  if [ "$HAS_SYSTEMD" != 1 ]; then
    say PREPARE "$1" "skipped (no systemd)" "$2 is not enabled or started here (systemctl enable --now $2 on a host booted with systemd)"
    return
  fi
  if [ -n "${3:-}" ] && systemctl is-active --quiet "$2"; then
    change systemctl "$3" "$2" || { item_failed "$1" "$ERR"; return; }
    did "${3}ed $2 (its configuration changed)"
  fi
  service_up "$2" || { item_failed "$1" "$ERR"; return; }
  item_done "$1" "$2 enabled at boot and running"
}
swap_signed() {  # FILE: mkswap has formatted it (the signature at the end of the first page)
  [ "$(dd if="$1" bs=1 skip=$(($(getconf PAGESIZE) - 10)) count=10 2>/dev/null)" = SWAPSPACE2 ]
}

# ----------------------------------------------------------------------------------------------- environment

if [ "$(id -u)" != 0 ]; then
  say PREPARE root failed "must run as root (the SSH user needs passwordless sudo)"
  exit 1
fi
# systemd runs this host when its runtime directory exists (sd_booted(3)); a chroot or a plain container has none.
HAS_SYSTEMD=0
if [ -d "$R/run/systemd/system" ]; then HAS_SYSTEMD=1; fi
# A chroot (ischroot: / differs from init's), or a container: the kernel is not this system's to configure.
IN_CONTAINER=0
if [ -e "$R/.dockerenv" ] || [ -e "$R/run/.containerenv" ] || ischroot 2>/dev/null ||
  systemd-detect-virt --container --quiet 2>/dev/null; then
  IN_CONTAINER=1
fi

# ----------------------------------------------------------------------------------------------------- items

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

item_docker_ce() {
  local pkg conflicts=""
  if ! installed "${DOCKER_PKGS[@]}"; then
    for pkg in "${DOCKER_CONFLICTS[@]}"; do
      if installed "$pkg"; then conflicts="$conflicts $pkg"; fi
    done
    if [ -n "$conflicts" ]; then
      item_failed docker "distribution packages conflict with Docker CE:$conflicts; remove them first (apt-get remove$conflicts) or set prepare.docker = \"distro\""
      return
    fi
    apt_install "${DOCKER_PKGS[@]}" || { item_failed docker "$ERR"; return; }
    did "installed ${DOCKER_PKGS[*]}"
  fi
  item_done docker "Docker CE and the compose plugin installed (download.docker.com)"
}

# The distribution's own Docker: docker.io, and Compose v2 from docker-compose-v2 (Ubuntu 22.04+) or docker-compose
# when that package is Compose v2 (Debian 13+); else docker-compose 1.29 (Debian 12), which deploy drives as
# `docker-compose`.
item_docker_distro() {
  local pkg conflicts="" compose="" version
  for pkg in docker-compose-v2 docker-compose; do
    if installed "$pkg"; then compose=$pkg; break; fi
  done
  if ! installed docker.io || [ -z "$compose" ]; then
    for pkg in "${DOCKER_CE_PKGS[@]}"; do
      if installed "$pkg"; then conflicts="$conflicts $pkg"; fi
    done
    if [ -n "$conflicts" ]; then
      item_failed docker "Docker CE is installed:$conflicts; set prepare.docker = \"docker-ce\" (or remove it first)"
      return
    fi
    apt_update || { item_failed docker "$ERR"; return; }
    if [ -z "$compose" ]; then
      compose=docker-compose
      if [ -n "$(candidate docker-compose-v2)" ]; then compose=docker-compose-v2; fi
    fi
    version=$(candidate "$compose")
    if [ -z "$version" ]; then item_failed docker "no $compose package in the configured apt sources"; return; fi
    apt_install docker.io "$compose" || { item_failed docker "$ERR"; return; }
    did "installed docker.io $compose ($version)"
  fi
  item_done docker "docker.io and $compose installed (the distribution's packages)"
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

item_ssh_hardening() {
  local old=""
  if ! grep -Eqi '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\.d/\*\.conf' "$SSHD_CONFIG" 2>/dev/null; then
    item_failed ssh-hardening "$SSHD_CONFIG does not include /etc/ssh/sshd_config.d/*.conf (add 'Include /etc/ssh/sshd_config.d/*.conf' as its first line)"
    return
  fi
  if ! file_is "$SSHD_DROPIN" "$SSHD_TEXT"; then
    if [ -f "$SSHD_DROPIN" ]; then old=$(cat "$SSHD_DROPIN"); fi
    change write_file "$SSHD_DROPIN" "$SSHD_TEXT" || { item_failed ssh-hardening "$ERR"; return; }
    # never leave a configuration sshd refuses: the next restart would lock everyone out
    if ! change sshd -t -f "$SSHD_CONFIG"; then
      if [ -n "$old" ]; then write_file "$SSHD_DROPIN" "$old"; else rm -f "$SSHD_DROPIN"; fi
      item_failed ssh-hardening "sshd -t refused the configuration, $SSHD_DROPIN put back: $ERR"
      return
    fi
    chmod 0644 "$SSHD_DROPIN"
    SSHD_CHANGED=1
    did "wrote $SSHD_DROPIN (keys only, no passwords, root with a key only)"
  fi
  item_done ssh-hardening "$SSHD_DROPIN: keys only, no passwords, root with a key only"
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

# ufw's rules and default policy live in its files (`ufw allow` on an inactive ufw only writes them); `enable`
# loads them into the kernel, the separate `firewall-active` item.
item_firewall() {
  local added port
  if ! installed ufw; then
    apt_install ufw || { item_failed firewall "$ERR"; return; }
    did "installed ufw"
  fi
  added=$(ufw show added 2>&1)
  # the SSH port first, so enabling the firewall can never lock this session out
  for port in "$SSH_PORT" 80 443; do
    if ! printf '%s\n' "$added" | grep -qxF "ufw allow $port/tcp"; then
      change ufw allow "$port/tcp" || { item_failed firewall "$ERR"; return; }
      did "allowed $port/tcp"
    fi
  done
  if ! grep -qx 'DEFAULT_INPUT_POLICY="DROP"' "$UFW_DEFAULTS" 2>/dev/null; then
    change ufw default deny incoming || { item_failed firewall "$ERR"; return; }
    did "default deny incoming"
  fi
  item_done firewall "ufw: default deny incoming, $SSH_PORT/tcp 80/tcp 443/tcp allowed"
}

item_firewall_active() {
  if [ "$IN_CONTAINER" = 1 ]; then
    say PREPARE firewall-active "skipped (container)" "the rules are not loaded into this kernel (ufw --force enable on the real host)"
    return
  fi
  if ! ufw status 2>&1 | grep -q '^Status: active'; then
    change ufw --force enable || { item_failed firewall-active "$ERR"; return; }
    did "enabled ufw (rules loaded, on at boot)"
  fi
  item_done firewall-active "ufw active and enabled at boot"
}

item_swap() {
  local active
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
  SWAP_NEEDED=1
  if [ ! -f "$SWAPFILE" ]; then
    if ! change fallocate -l "${SWAP_MB}M" "$SWAPFILE"; then
      rm -f "$SWAPFILE"
      change dd if=/dev/zero of="$SWAPFILE" bs=1M count="$SWAP_MB" || { rm -f "$SWAPFILE"; item_failed swap "$ERR"; return; }
    fi
    did "created $SWAPFILE (${SWAP_MB} MB)"
  fi
  if [ "$(stat -c %a "$SWAPFILE")" != 600 ]; then
    change chmod 600 "$SWAPFILE" || { item_failed swap "$ERR"; return; }
    did "mode 0600"
  fi
  if ! printf '%s\n' "$active" | grep -qxF "$SWAPFILE" && ! swap_signed "$SWAPFILE"; then
    change mkswap "$SWAPFILE" || { item_failed swap "$ERR"; return; }
    did "mkswap"
  fi
  if ! awk -v f="$SWAPFILE" '$1 == f && $3 == "swap" { found = 1 } END { exit !found }' "$FSTAB" 2>/dev/null; then
    change append_line "$FSTAB" "$SWAPFILE none swap sw 0 0" || { item_failed swap "$ERR"; return; }
    did "added to $FSTAB"
  fi
  item_done swap "RAM ${RAM_MB} MB < $MIN_RAM_MB MB: $SWAPFILE (${SWAP_MB} MB) formatted and in $FSTAB"
}

item_swap_active() {
  if [ "$SWAP_NEEDED" != 1 ]; then return; fi
  if swapon --show=NAME --noheadings 2>/dev/null | grep -qxF "$SWAPFILE"; then
    item_done swap-active "$SWAPFILE in use"
    return
  fi
  if [ "$IN_CONTAINER" = 1 ]; then
    say PREPARE swap-active "skipped (container)" "swapon $SWAPFILE is for the host's own kernel (the fstab line turns it on at boot)"
    return
  fi
  change swapon "$SWAPFILE" || { item_failed swap-active "$ERR"; return; }
  did "swapon $SWAPFILE"
  item_done swap-active "$SWAPFILE in use"
}

item_fail2ban() {
  if ! installed fail2ban python3-systemd; then
    apt_install fail2ban python3-systemd || { item_failed fail2ban "$ERR"; return; }
    did "installed fail2ban"
  fi
  if ! file_is "$JAIL" "$JAIL_TEXT"; then
    change write_file "$JAIL" "$JAIL_TEXT" || { item_failed fail2ban "$ERR"; return; }
    did "wrote $JAIL"
    JAIL_CHANGED=1
  fi
  item_done fail2ban "installed, sshd jail on port $SSH_PORT ($JAIL)"
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

# certbot: deploy obtains the TLS certificate with it (ACME HTTP-01 through the app's nginx) when the public URL is
# https://; its renewal runs from the distribution's certbot.timer (or cron), with a hook reloading nginx
item_certbot() {
  if ! installed certbot; then
    apt_install certbot || { item_failed certbot "$ERR"; return; }
    did "installed certbot"
  fi
  item_done certbot "installed (deploy obtains the certificate with it)"
}

RAM_MB=$(free -m 2>/dev/null | awk '/^Mem:/ { print $2 }')
item_os
FAILED_BEFORE=$FAILED
if [ "$DOCKER_SOURCE" = docker-ce ]; then
  item_docker_repo
  item_docker_ce
else
  item_docker_distro
fi
service_item docker-service docker
item_deploy_user
FAILED_BEFORE=$FAILED
item_ssh_hardening
if [ "$SSHD_CHANGED" = 1 ]; then service_item sshd-reload ssh reload; else service_item sshd-reload ssh; fi
item_app_dir
item_firewall
item_firewall_active
item_swap
item_swap_active
FAILED_BEFORE=$FAILED
item_fail2ban
if [ "$JAIL_CHANGED" = 1 ]; then service_item fail2ban-service fail2ban restart; else service_item fail2ban-service fail2ban; fi
item_unattended_upgrades
item_certbot

# ------------------------------------------------------------------------------------------------ self-check

check_docker() {
  local out
  if out=$(docker version --format '{{.Server.Version}}' 2>&1); then
    say CHECK docker ok "engine $out"
  elif [ "$HAS_SYSTEMD" != 1 ]; then
    say CHECK docker "skipped (no systemd)" "the engine is not running: nothing starts dockerd here"
  else
    say CHECK docker failed "docker version: $(printf '%s' "$out" | tail -n 2)"
  fi
  if out=$(docker compose version --short 2>&1); then
    say CHECK compose ok "docker compose $out"
  elif out=$(docker-compose version --short 2>&1); then
    say CHECK compose ok "docker-compose $out (Compose v1: deploy runs docker-compose, without --wait)"
  else
    say CHECK compose failed "neither 'docker compose' nor 'docker-compose' runs: $(printf '%s' "$out" | tail -n 2)"
  fi
}

check_ssh() {
  local effective bad=""
  if ! effective=$(sshd -T -f "$SSHD_CONFIG" 2>&1); then
    say CHECK ssh failed "sshd -T: $(printf '%s' "$effective" | tail -n 1)"
    return
  fi
  printf '%s\n' "$effective" | grep -qxE 'permitrootlogin (without-password|prohibit-password|no)' || bad="$bad PermitRootLogin"
  printf '%s\n' "$effective" | grep -qx 'passwordauthentication no' || bad="$bad PasswordAuthentication"
  printf '%s\n' "$effective" | grep -qx 'kbdinteractiveauthentication no' || bad="$bad KbdInteractiveAuthentication"
  if [ -n "$bad" ]; then
    say CHECK ssh failed "sshd's effective configuration still allows:$bad (an earlier file in /etc/ssh/sshd_config.d or sshd_config wins)"
  else
    say CHECK ssh ok "keys only: no passwords, root with a key only"
  fi
}

check_ufw() {
  local status allowed want extra="" missing="" port
  if [ "$IN_CONTAINER" = 1 ]; then
    say CHECK ufw "skipped (container)" "rules written but not loaded into this kernel"
    return
  fi
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
  elif [ "$IN_CONTAINER" = 1 ]; then
    say CHECK swap "skipped (container)" "no swap active in this kernel; $SWAPFILE is ready"
  else
    say CHECK swap failed "no swap active and RAM is ${RAM_MB} MB < $MIN_RAM_MB MB"
  fi
}

check_fail2ban() {
  if [ "$HAS_SYSTEMD" != 1 ]; then
    say CHECK fail2ban "skipped (no systemd)" "fail2ban is not running (its sshd jail reads the systemd journal)"
    return
  fi
  if ! systemctl is-active --quiet fail2ban; then say CHECK fail2ban failed "fail2ban is not running"; return; fi
  if ! fail2ban-client status sshd >/dev/null 2>&1; then
    say CHECK fail2ban failed "fail2ban runs but the sshd jail is not active (fail2ban-client status sshd)"
    return
  fi
  say CHECK fail2ban ok "running, sshd jail active"
}

check_unattended_upgrades() {
  if [ "$HAS_SYSTEMD" != 1 ]; then
    say CHECK unattended-upgrades "skipped (no systemd)" "apt-daily-upgrade.timer (systemd) runs the upgrades"
    return
  fi
  if systemctl is-enabled --quiet apt-daily-upgrade.timer; then
    say CHECK unattended-upgrades ok "apt-daily-upgrade.timer enabled"
  else
    say CHECK unattended-upgrades failed "apt-daily-upgrade.timer is not enabled (systemctl enable --now apt-daily-upgrade.timer)"
  fi
}

check_docker
check_ssh
check_ufw
check_db_ports
check_swap
check_fail2ban
check_unattended_upgrades

if [ "$FAILED" -gt 0 ]; then
  echo "prepare: $FAILED item(s) failed" >&2
  exit 1
fi
exit 0
}
