#!/usr/bin/env bash
# Run the test suite in .venv (created by scripts/setup.sh if needed). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
