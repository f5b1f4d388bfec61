#!/usr/bin/env bash
# Make a Docker engine available for the container tests: install Debian's docker.io
# and debootstrap if missing (needs root), start dockerd if it isn't running, wait for it.
set -euo pipefail
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io containerd runc iptables debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  nohup dockerd >/tmp/regen-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
fi
docker info --format 'docker engine {{.ServerVersion}} ready'
