#!/usr/bin/env bash
# A Debian 12 (bookworm) root filesystem made with debootstrap, as a tarball: the shared fixture of the tests that
# need a real operating system (the image's base stand-in in tests/deploy/test_image.py; `prepare` over SSH).
#
#   scripts/rootfs.sh            # prints the path of the tarball, building it first when it is not cached
#
# The tarball is cached as $TIMETODO_CACHE/rootfs-debian12-<hash of this script>.tar (default cache:
# /var/cache/timetodo), so a changed recipe builds a new one and a fresh machine builds it once (~1–2 min, from
# deb.debian.org). Needs root and debootstrap (scripts/test.sh installs it). Progress goes to stderr.
#
# Contents: `--variant=minbase` plus ca-certificates and Python 3.11 with pip and venv: what the official
# python:3.11-slim-bookworm image holds, Python coming from Debian (/usr/bin) instead of a source build
# (/usr/local/bin). scripts/podman.sh turns it into that image's stand-in.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/rootfs.sh"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=ca-certificates,python3,python3-pip,python3-venv,netbase,tzdata

CACHE="${TIMETODO_CACHE:-/var/cache/timetodo}"
HASH="$(sha256sum "$SELF" | cut -c1-12)"
TARBALL="$CACHE/rootfs-debian12-$HASH.tar"

if [ -s "$TARBALL" ]; then
  echo "$TARBALL"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "rootfs.sh: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null 2>&1 || { echo "rootfs.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

mkdir -p "$CACHE"
# One builder at a time (parallel test sessions share the cache); the second waits and reuses the result.
exec 9>"$CACHE/.rootfs.lock"
flock 9
if [ -s "$TARBALL" ]; then
  echo "$TARBALL"
  exit 0
fi

WORK="$(mktemp -d "$CACHE/.rootfs-XXXXXX")"
cleanup() {
  for mount in proc sys dev/pts dev; do
    umount -l "$WORK/root/$mount" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

start=$(date +%s)
echo "rootfs.sh: debootstrap $SUITE from $MIRROR into $WORK/root" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$WORK/root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  tail -n 30 "$WORK/debootstrap.log" >&2
  exit 1
}

R="$WORK/root"
# Security updates come from the same places as on a real Debian 12 host.
cat >"$R/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
# Smaller, like the official slim images: no apt lists, no docs, no caches.
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb \
  "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/info/* "$R"/var/log/*.log
: >"$R/etc/hostname"
rm -f "$R/etc/resolv.conf"

echo "rootfs.sh: packing" >&2
tar --numeric-owner --xattrs -C "$R" -cf "$WORK/rootfs.tar" .
mv "$WORK/rootfs.tar" "$TARBALL"
# Older recipes' tarballs are not needed any more.
find "$CACHE" -maxdepth 1 -name 'rootfs-debian12-*.tar' ! -name "$(basename "$TARBALL")" -delete
echo "rootfs.sh: built $TARBALL in $(($(date +%s) - start)) s" >&2
echo "$TARBALL"
