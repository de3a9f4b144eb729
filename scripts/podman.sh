#!/usr/bin/env bash
# Build and run the production image (Dockerfile) with podman on a machine that has no Docker engine and no
# registry access (the development and CI machines of this project).
#
#   scripts/podman.sh base            # the local stand-in for the Dockerfile's base image; prints its name
#   scripts/podman.sh build [TAG]     # base + `podman build` of the Dockerfile (default tag timetodo:podman)
#   scripts/podman.sh run ARGS...     # `podman run` with the flags this kind of machine needs
#
# THE BASE IMAGE IS A LOCALLY BUILT STAND-IN. The Dockerfile starts FROM python:3.11-slim-bookworm, which cannot be
# pulled here. `base` imports the Debian 12 root filesystem from scripts/rootfs.sh (debootstrap, Debian's own
# Python 3.11 with pip and venv) and adds what the official image has on top of Debian: `python`, `python3`,
# `python3.11` and `pip` in /usr/local/bin, no PEP 668 "externally managed" marker, LANG=C.UTF-8, CMD python3.
# It is tagged with the official name, so our Dockerfile builds unchanged. It is not the official image (that one
# compiles Python from source into /usr/local and is ~50 MB smaller); what the tests show about our image holds
# for the layers our Dockerfile adds.
#
# Facts of this machine kind (../shared/INFRA-NOTES.md): containers run only with runc and explicit ulimits, and
# only from local images. RUN steps reach Debian and PyPI through the host's network (--network host).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="docker.io/library/python:3.11-slim-bookworm"
PODMAN=(podman --runtime runc)
ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

command -v podman >/dev/null 2>&1 || { echo "podman.sh: podman is not installed (apt-get install podman buildah runc)" >&2; exit 1; }

base() {
  local tarball rootfs_id label
  tarball="$(bash "$ROOT/scripts/rootfs.sh")"
  rootfs_id="$(basename "$tarball" .tar)-$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)"
  label="$(podman image inspect --format '{{ index .Labels "timetodo.stand-in" }}' "$BASE_IMAGE" 2>/dev/null || true)"
  if [ "$label" = "$rootfs_id" ]; then
    echo "$BASE_IMAGE"
    return
  fi
  local start raw dir
  start=$(date +%s)
  raw="localhost/timetodo-rootfs:$rootfs_id"
  podman import --quiet "$tarball" "$raw" >/dev/null
  dir="$(mktemp -d)"
  cat >"$dir/Containerfile" <<EOF
FROM $raw
RUN rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \\
    && ln -s /usr/bin/python3.11 /usr/local/bin/python3.11 \\
    && ln -s python3.11 /usr/local/bin/python3 \\
    && ln -s python3.11 /usr/local/bin/python \\
    && ln -s /usr/bin/pip3 /usr/local/bin/pip3 \\
    && ln -s pip3 /usr/local/bin/pip
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
LABEL timetodo.stand-in="$rootfs_id" \\
      org.opencontainers.image.description="LOCAL STAND-IN for python:3.11-slim-bookworm (Debian 12 debootstrap + Debian's Python 3.11)"
CMD ["python3"]
EOF
  "${PODMAN[@]}" build --quiet --pull=never "${ULIMITS[@]}" --network none -t "$BASE_IMAGE" "$dir" >/dev/null
  rm -rf "$dir"
  podman rmi --force "$raw" >/dev/null 2>&1 || true
  echo "podman.sh: stand-in $BASE_IMAGE made in $(($(date +%s) - start)) s" >&2
  echo "$BASE_IMAGE"
}

build() {
  local tag="${1:-timetodo:podman}" start
  base >/dev/null
  start=$(date +%s)
  # RUN steps trust what the host trusts (apt, pip and uv with UV_NATIVE_TLS read /etc/ssl/certs), e.g. a TLS-inspecting
  # egress proxy's CA; mounted only while they run, never copied into a layer.
  local trust=()
  [ -s /etc/ssl/certs/ca-certificates.crt ] && trust=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  "${PODMAN[@]}" build --pull=never --format docker "${ULIMITS[@]}" "${trust[@]}" --network host --layers -t "$tag" -f "$ROOT/Dockerfile" "$ROOT" >&2
  echo "podman.sh: built $tag in $(($(date +%s) - start)) s" >&2
  echo "$tag"
}

case "${1:-}" in
  base) base ;;
  build) shift; build "$@" ;;
  run) shift; exec "${PODMAN[@]}" run "${ULIMITS[@]}" "$@" ;;
  *) echo "usage: scripts/podman.sh base | build [TAG] | run ARGS..." >&2; exit 2 ;;
esac
