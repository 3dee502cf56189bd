#!/usr/bin/env bash
# Build a Debian base image with Python 3 and venv from Debian packages alone, for machines
# that cannot pull images from a registry (the Dockerfile's default, python:3.11-slim, needs one).
#
#   sudo docker/base-image.sh [IMAGE]        # default IMAGE: maskrcnn-serve-base:bookworm
#   docker build --build-arg BASE_IMAGE=maskrcnn-serve-base:bookworm -t maskrcnn-serve .
#
# Needs root, debootstrap and a reachable Debian mirror ($DEBIAN_MIRROR, default
# http://deb.debian.org/debian). Under a minute on a 2-core machine; the image is about
# 150 MB. An image of that name that already exists is kept unless --force is given.
set -euo pipefail

force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
image="${1:-maskrcnn-serve-base:bookworm}"
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

die() { echo "base-image.sh: error: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root (run with sudo)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
command -v docker >/dev/null || die "docker is not installed"

if [ "$force" -eq 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "base-image.sh: $image exists (use --force to rebuild)"
  exit 0
fi

root="$(mktemp -d /tmp/maskrcnn-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "base-image.sh: debootstrap $suite from $mirror into $root"
# minbase: essential packages and apt only. python3-venv gives `python3 -m venv` (the image
# installs into a venv of its own); ca-certificates lets pip verify TLS.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$root" "$mirror" >/dev/null
# What a base image leaves out: package caches, lists (apt-get update fetches them again),
# and the host's resolver settings that debootstrap copied in.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
: > "$root/etc/resolv.conf"
: > "$root/etc/hostname"

tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase $suite + python3, python3-venv, ca-certificates" \
  - "$image" >/dev/null
echo "base-image.sh: built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
