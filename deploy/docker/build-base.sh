#!/usr/bin/env bash
# Build the base image regen-base:bookworm (Debian bookworm, Python 3.11, pip, venv)
# without any registry: debootstrap a root filesystem and `docker import` it.
# Where a registry is reachable, BASE_IMAGE=python:3.11-slim-bookworm works as well.
set -euo pipefail
TAG=${1:-regen-base:bookworm}
ROOTFS=$(mktemp -d)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$ROOTFS"
# The host may trust extra CAs (a proxy's); pip in the image must trust them too.
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' - "$TAG"
echo "built $TAG"
