#!/usr/bin/env bash
# Build every regen image from this checkout: regen/{describer,generator,scorer,orchestrator}:VERSION.
# torch wheels travel in the build context (deploy/docker/wheels), since pip inside a
# build may not see this machine's package index.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=${VERSION:-0.1.0}
BASE_IMAGE=${BASE_IMAGE:-regen-base:bookworm}
PARTS=${*:-describer generator scorer orchestrator}

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && [[ $BASE_IMAGE == regen-base:* ]]; then
  bash deploy/docker/build-base.sh "$BASE_IMAGE"
fi
mkdir -p deploy/docker/wheels
if [[ $PARTS != orchestrator ]] && ! ls deploy/docker/wheels/torch-*.whl >/dev/null 2>&1; then
  python3 -m pip download -d deploy/docker/wheels torch==2.14.1 torchvision==0.29.1
fi
for part in $PARTS; do
  dockerfile=services/$part/Dockerfile
  [[ $part == orchestrator ]] && dockerfile=orchestrator/Dockerfile
  DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    -f "$dockerfile" -t "regen/$part:$VERSION" .
done
