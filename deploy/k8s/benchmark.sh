#!/usr/bin/env bash
# Benchmark several generators in turn against the one shared describer and scorer, build
# the leaderboard from their runs, and copy every result to ./runs/k8s:
#   bash deploy/k8s/benchmark.sh sd15 sdxl openai        (names of deploy/k8s/generators/*)
# For each generator: its model is fetched, its Job runs into /results/<name> (a Job left from
# before is deleted first, so the run starts again and resumes what is on the volume), then
# its Deployment is scaled to 0 so the next generator gets the GPU. Then
# `regen compare /results/<name>...` runs in the results pod. Stops at the first failed Job.
# Environment: KUBECTL (default kubectl), REGEN_NAMESPACE (regen), REGEN_OUT (runs/k8s).
set -euo pipefail
cd "$(dirname "$0")/../.."
KUBECTL=${KUBECTL:-kubectl}
NS=${REGEN_NAMESPACE:-regen}
OUT=${REGEN_OUT:-runs/k8s}
if [[ $# -eq 0 ]]; then
  echo "usage: $0 GENERATOR... (from: $(ls deploy/k8s/generators | tr '\n' ' '))" >&2
  exit 2
fi
for name in "$@"; do
  [[ -f deploy/k8s/generators/$name/kustomization.yaml ]] || { echo "no deploy/k8s/generators/$name" >&2; exit 2; }
done
k() { "$KUBECTL" -n "$NS" "$@"; }

wait_job() {  # wait_job NAME: until the Job is Complete (0) or Failed (1)
  local state
  while true; do
    state=$(k get job "$1" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}' 2>/dev/null || true)
    case " $state " in
      *" Complete "*) echo "job/$1: complete"; return 0 ;;
      *" Failed "*) echo "job/$1: failed; kubectl -n $NS logs job/$1 --all-containers --tail=50" >&2; return 1 ;;
    esac
    sleep 20
  done
}

"$KUBECTL" apply -k deploy/k8s/base
k get job fetch >/dev/null 2>&1 && wait_job fetch
for name in "$@"; do
  k delete job "regen-run-$name" --ignore-not-found
  "$KUBECTL" apply -k "deploy/k8s/generators/$name"
  k scale deployment "generator-$name" --replicas=1
  if k get job "fetch-model-$name" >/dev/null 2>&1; then wait_job "fetch-model-$name"; fi
  wait_job "regen-run-$name"
  k scale deployment "generator-$name" --replicas=0
done
k rollout status deployment/results --timeout=10m
if [[ $# -ge 2 ]]; then
  k exec deployment/results -- regen compare "${@/#//results/}" --out /results/leaderboard
fi
mkdir -p "$OUT"
k exec deployment/results -- tar -C /results -cf - --exclude=./cache . | tar -xf - -C "$OUT"
echo "results in $OUT/ (leaderboard: $OUT/leaderboard/)"
