#!/usr/bin/env bash
# A "fresh VPS" stand-in: the Debian 12 root filesystem of scripts/rootfs.sh plus what a provider's Debian 12 /
# Ubuntu 22.04 cloud image already holds (openssh-server, sudo, curl, iproute2, procps), as a cached tarball. The
# shared fixture of tests/ops/test_prepare_os.py, which runs `timetodo migrate prepare` against it over SSH.
#
#   scripts/vps-rootfs.sh        # prints the path of the tarball, building it first when it is not cached
#
# Cached as $TIMETODO_CACHE/rootfs-vps-<hash of the base tarball's name and this script>.tar (default cache:
# /var/cache/timetodo): built once per recipe (~30 s from deb.debian.org), shared by parallel test sessions.
#
# One change that a real VPS does not have: /usr/sbin/policy-rc.d answers 101 ("action forbidden"), so package
# scripts never start daemons (sshd, dockerd, fail2ban) from inside the chroot on the test machine, the standard
# setting for Debian chroots and container images. prepare itself never relies on it: without systemd it reports
# services as `skipped (no systemd)`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/vps-rootfs.sh"
PACKAGES=(openssh-server sudo curl iproute2 procps)

CACHE="${TIMETODO_CACHE:-/var/cache/timetodo}"
BASE="$(bash "$ROOT/scripts/rootfs.sh")"
HASH="$( (basename "$BASE"; cat "$SELF") | sha256sum | cut -c1-12)"
TARBALL="$CACHE/rootfs-vps-$HASH.tar"

if [ -s "$TARBALL" ]; then
  echo "$TARBALL"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "vps-rootfs.sh: needs root (chroot)" >&2; exit 1; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.rootfs-vps.lock"
flock 9
if [ -s "$TARBALL" ]; then
  echo "$TARBALL"
  exit 0
fi

WORK="$(mktemp -d "$CACHE/.rootfs-vps-XXXXXX")"
R="$WORK/root"
cleanup() {
  for mount in proc dev; do
    umount -l "$R/$mount" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

start=$(date +%s)
mkdir -p "$R"
tar --numeric-owner -xf "$BASE" -C "$R"
printf '#!/bin/sh\n# test stand-in only: package scripts start no daemons inside the chroot\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
chmod 755 "$R/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$R/etc/resolv.conf"
mount -t proc proc "$R/proc"
mount --bind /dev "$R/dev"
echo "vps-rootfs.sh: installing ${PACKAGES[*]} into the chroot" >&2
chroot "$R" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get update -qq >"$WORK/apt.log" 2>&1 &&
  chroot "$R" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get install -y -qq --no-install-recommends \
    "${PACKAGES[@]}" >>"$WORK/apt.log" 2>&1 || {
  tail -n 30 "$WORK/apt.log" >&2
  exit 1
}
umount -l "$R/proc" "$R/dev"
# like a fresh image: no apt lists or downloaded packages, no host keys of the builder's (made at first start)
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb "$R"/etc/ssh/ssh_host_*
rm -f "$R/etc/resolv.conf"
tar --numeric-owner --xattrs -C "$R" -cf "$WORK/rootfs.tar" .
mv "$WORK/rootfs.tar" "$TARBALL"
find "$CACHE" -maxdepth 1 -name 'rootfs-vps-*.tar' ! -name "$(basename "$TARBALL")" -delete
echo "vps-rootfs.sh: built $TARBALL in $(($(date +%s) - start)) s" >&2
echo "$TARBALL"
