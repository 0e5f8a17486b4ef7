#!/bin/sh
# `make release-demo`: `bitconv release recipes/demo.toml` end to end with no network: the local
# fake hub serves the embedded tiny model under the demo recipe's repo id.
set -eu
PYTHON=${PYTHON:-python3}
WORK=${WORK:-build/release-demo}
OUT=${OUT:-release/demo}
REPO=$($PYTHON -c 'from bitconv.stages.recipes import load_recipe; print(load_recipe("recipes/demo.toml").repo)')
rm -rf "$WORK" && mkdir -p "$WORK"
. scripts/fakehub.sh
$PYTHON -m bitconv release recipes/demo.toml --out "$OUT" -j "${JOBS:-2}"
(cd "$OUT" && sha256sum -c --quiet SHA256SUMS) && echo "release/demo: SHA256SUMS ok" >&2
