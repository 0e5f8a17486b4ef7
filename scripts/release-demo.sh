#!/bin/sh
# `make release-demo`: `bitconv release recipes/demo.toml` end to end with no network: the local
# fake hub serves the embedded tiny model under the demo recipe's repo id.
set -eu
PYTHON=${PYTHON:-python3}
WORK=${WORK:-build/release-demo}
OUT=${OUT:-release/demo}
REPO=$($PYTHON -c 'from bitconv.recipes import load_recipe; print(load_recipe("recipes/demo.toml").repo)')
rm -rf "$WORK" && mkdir -p "$WORK"
$PYTHON -m bitconv make-fixture bitnet-b1.58-2B-4T-bf16 "$WORK/hub/$REPO" >/dev/null
$PYTHON -m bitconv.synth.fakehub "$WORK/hub" --port-file "$WORK/hub.port" &
HUB=$!
trap 'kill $HUB 2>/dev/null; wait $HUB 2>/dev/null || true' EXIT INT TERM
n=0
until [ -s "$WORK/hub.port" ]; do
  n=$((n + 1)); [ $n -lt 100 ] || { echo "release-demo: the fake hub did not start" >&2; exit 1; }
  sleep 0.1
done
HF_ENDPOINT="http://127.0.0.1:$(cat "$WORK/hub.port")"
export HF_ENDPOINT HF_HOME="$WORK/hf_home" HF_HUB_OFFLINE=0
$PYTHON -m bitconv release recipes/demo.toml --out "$OUT" -j "${JOBS:-2}"
(cd "$OUT" && sha256sum -c --quiet SHA256SUMS) && echo "release/demo: SHA256SUMS ok" >&2
