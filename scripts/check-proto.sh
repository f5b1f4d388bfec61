#!/usr/bin/env bash
# Lint the regen.v1 contract (buf, rules in proto/buf.yaml) and check that it stays wire-
# and JSON-compatible: against proto/v1.binpb, the contract as released (rebuild it with
# `npx buf build -o v1.binpb` in proto/ only when a release adds to the contract), and,
# on a branch, against main. Installs buf from npm (proto/package-lock.json) when missing.
set -euo pipefail
cd "$(dirname "$0")/../proto"
[[ -x node_modules/.bin/buf ]] || npm ci --no-audit --no-fund --loglevel=error
buf=node_modules/.bin/buf
"$buf" lint
"$buf" breaking --against v1.binpb
branch=$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo "")
if [[ -n $branch && $branch != main && $branch != HEAD ]] && git rev-parse --verify -q main >/dev/null; then
  "$buf" breaking --against "../.git#branch=main,subdir=proto"
fi
echo "proto: lint and breaking-change checks passed"
