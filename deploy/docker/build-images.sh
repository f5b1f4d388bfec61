#!/usr/bin/env bash
# Build the regen images from this checkout, tagged VERSION (default 0.1.0):
#   regen/python   venv + non-root user (the orchestrator's base)
#   regen/torch    regen/python + CUDA torch: the one torch layer the three services share
#   regen/{describer,generator,scorer,orchestrator}
# Usage: build-images.sh [--vllm] [PART...]     (PARTS: describer generator scorer orchestrator)
#   --vllm   the describer with the vLLM backend (regen/describer:VERSION-vllm; GPU only):
#            resolved by uv without constraints.txt's pins, torch from the package index.
# torch's wheels are downloaded once into deploy/docker/wheels (this machine's index, which
# pip inside a build may not see) and are the build context of the torch image only.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=${VERSION:-0.1.0}
BASE_IMAGE=${BASE_IMAGE:-regen-base:bookworm}
TORCH_PACKAGES=${TORCH_PACKAGES:-torch==2.14.1 torchvision==0.29.1}
VLLM=0
parts=()
for arg in "$@"; do
  case $arg in
    --vllm) VLLM=1 ;;
    describer | generator | scorer | orchestrator) parts+=("$arg") ;;
    *) echo "usage: $0 [--vllm] [describer|generator|scorer|orchestrator]..." >&2; exit 2 ;;
  esac
done
[[ ${#parts[@]} -gt 0 ]] || parts=(describer generator scorer orchestrator)

build() {  # build TAG DOCKERFILE CONTEXT [docker build args...]; CONTEXT - : none
  local tag=$1 dockerfile=$2 context=$3 start=$SECONDS
  shift 3
  local cmd=(docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" "$@" -t "$tag")
  if [[ $context == - ]]; then
    DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} "${cmd[@]}" - <"$dockerfile"
  else
    DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} "${cmd[@]}" -f "$dockerfile" "$context"
  fi
  echo "built $tag in $((SECONDS - start)) s: $(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.2f GB", $1/1e9}')"
}

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && [[ $BASE_IMAGE == regen-base:* ]]; then
  bash deploy/docker/build-base.sh "$BASE_IMAGE"
fi
build "regen/python:$VERSION" deploy/docker/torch.Dockerfile - --target python

needs_torch=0
for part in "${parts[@]}"; do
  [[ $part == orchestrator || ($part == describer && $VLLM == 1) ]] || needs_torch=1
done
if [[ $needs_torch == 1 ]]; then
  mkdir -p deploy/docker/wheels
  # shellcheck disable=SC2086
  python3 -m pip download -q -d deploy/docker/wheels -c constraints.txt $TORCH_PACKAGES
  build "regen/torch:$VERSION" deploy/docker/torch.Dockerfile deploy/docker/wheels \
    --build-arg "TORCH_PACKAGES=$TORCH_PACKAGES"
fi

for part in "${parts[@]}"; do
  case $part in
    orchestrator) build "regen/orchestrator:$VERSION" orchestrator/Dockerfile . --build-arg "PYTHON_IMAGE=regen/python:$VERSION" ;;
    describer)
      if [[ $VLLM == 1 ]]; then
        build "regen/describer:$VERSION-vllm" services/describer/Dockerfile . --build-arg "TORCH_IMAGE=regen/python:$VERSION" \
          --build-arg EXTRAS=bentoml,vllm --build-arg INSTALLER=uv --build-arg CONSTRAINTS=none
      else
        build "regen/describer:$VERSION" services/describer/Dockerfile . --build-arg "TORCH_IMAGE=regen/torch:$VERSION"
      fi
      ;;
    *) build "regen/$part:$VERSION" "services/$part/Dockerfile" . --build-arg "TORCH_IMAGE=regen/torch:$VERSION" ;;
  esac
done
