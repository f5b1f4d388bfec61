#!/usr/bin/env bash
# Create .venv with every regen part installed (editable) and the test tools.
# Idempotent: does nothing when the dependency files are unchanged since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${REGEN_VENV:-.venv}
PARTS=(proto common orchestrator services/scorer services/generator services/describer tools/tiny_models)

stamp_inputs() { cat constraints.txt requirements-dev.txt proto/package-lock.json examples/generators/node/package-lock.json "${PARTS[@]/%//pyproject.toml}" | sha256sum | cut -c1-16; }
stamp="$VENV/.regen-setup-$(stamp_inputs)"
if [[ -f "$stamp" ]]; then
  exit 0
fi

echo "setup: creating $VENV (first run takes a few minutes: torch is large)" >&2
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
"${pip[@]}" install -q --upgrade pip
# torch first, from plain pip: it is the one CPU-runnable build this machine's local wheels offer.
"${pip[@]}" install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
# Services with their BentoML adapters; the describer also with `transformers serve`,
# which its OpenAI-backend test talks to. vLLM (GPU only) is left out.
declare -A EXTRAS=([services/scorer]=bentoml [services/generator]=bentoml [services/describer]=bentoml,serving)
editable=()
for part in "${PARTS[@]}"; do
  extras=${EXTRAS[$part]:-}
  editable+=(-e "./$part${extras:+[$extras]}")
done
"${pip[@]}" install -q -c constraints.txt "${editable[@]}" -r requirements-dev.txt
# buf, for the contract's lint and breaking-change checks (scripts/check-proto.sh).
if command -v npm >/dev/null; then
  (cd proto && npm ci --no-audit --no-fund --loglevel=error)
fi
# The Node.js example generator (examples/generators/node), which the tests check and benchmark.
if command -v npm >/dev/null; then
  (cd examples/generators/node && npm ci --no-audit --no-fund --loglevel=error)
fi
rm -f "$VENV"/.regen-setup-*
touch "$stamp"
echo "setup: done; activate with: source $VENV/bin/activate" >&2
