#!/usr/bin/env bash
# Build the serving image where no registry can be reached: a Debian base from Debian packages
# (docker/base-image.sh), then the Dockerfile on it, with this machine's CA bundle handed to pip
# as a BuildKit secret (for TLS-intercepting proxies; it lands in no layer of the image).
#
#   sudo docker/build-image.sh [TAG]          # default TAG: maskrcnn-serve:latest
#
# Environment: BASE_IMAGE (skip base-image.sh and build on this image instead),
# PIP_CA_BUNDLE (default: $PIP_CERT, else /etc/ssl/certs/ca-certificates.crt; "none" for no
# secret). Extra arguments after TAG go to `docker build`.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${1:-maskrcnn-serve:latest}"
shift || true
base="${BASE_IMAGE:-}"
if [ -z "$base" ]; then
  base="maskrcnn-serve-base:bookworm"
  docker/base-image.sh "$base"
fi

# The CA secret needs BuildKit: Docker >= 23 has it through the buildx plugin; older clients
# (Debian's docker.io 20.10 ships /usr/bin/docker) have it built in behind DOCKER_BUILDKIT=1.
# A newer client without buildx would fall back to the legacy builder, which cannot parse
# `RUN --mount`, so look for a client that can.
pick_client() {
  local c major
  if docker buildx version >/dev/null 2>&1; then echo docker; return; fi
  for c in docker /usr/bin/docker; do
    command -v "$c" >/dev/null || continue
    major="$("$c" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)"
    if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then echo "$c"; return; fi
  done
  echo "build-image.sh: error: no BuildKit-capable docker client (install the buildx plugin)" >&2
  exit 1
}
client="$(pick_client)"

ca="${PIP_CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
secret=()
if [ "$ca" != "none" ] && [ -s "$ca" ]; then
  secret=(--secret "id=pip_ca,src=$ca")
fi

echo "build-image.sh: building $tag on $base${secret:+ (pip CA bundle: $ca)}"
DOCKER_BUILDKIT=1 "$client" build --progress=plain --build-arg "BASE_IMAGE=$base" \
  "${secret[@]}" -t "$tag" "$@" .
