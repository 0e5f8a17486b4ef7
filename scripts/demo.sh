#!/bin/sh
# `make demo`: the whole pipeline, pull -> pack -> inspect -> verify -> repack, with no network.
# A local fake Hugging Face Hub (bitconv/synth/fakehub.py) serves the embedded tiny BitNet 2B4T
# (-bf16) checkpoint under its real repo id; bitconv talks to it through HF_ENDPOINT exactly as it
# would to huggingface.co, with its own HF cache under $DEMO.
set -eu
PYTHON=${PYTHON:-python3}
DEMO=${DEMO:-build/demo}
REPO=microsoft/bitnet-b1.58-2B-4T-bf16

rm -rf "$DEMO" && mkdir -p "$DEMO"

# 1. The "hub": the tiny checkpoint as $DEMO/hub/<org>/<name>, served on a free port.
$PYTHON -m bitconv make-fixture bitnet-b1.58-2B-4T-bf16 "$DEMO/hub/$REPO" >/dev/null
$PYTHON -m bitconv.synth.fakehub "$DEMO/hub" --port-file "$DEMO/hub.port" &
HUB=$!
trap 'kill $HUB 2>/dev/null; wait $HUB 2>/dev/null || true' EXIT INT TERM
n=0
until [ -s "$DEMO/hub.port" ]; do   # the port file appears once the server listens
  n=$((n + 1)); [ $n -lt 100 ] || { echo "demo: the fake hub did not start" >&2; exit 1; }
  sleep 0.1
done

# 2. Point bitconv (through huggingface_hub) at it, with a private cache.
HF_ENDPOINT="http://127.0.0.1:$(cat "$DEMO/hub.port")"
export HF_ENDPOINT HF_HOME="$DEMO/hf_home" HF_HUB_OFFLINE=0
unset HF_TOKEN || true

# 3. Pull (stdout is the verified snapshot dir), pack by repo id (already pulled: the second pull
#    transfers nothing), inspect, and verify against the pulled snapshot.
MODEL=$($PYTHON -m bitconv pull "$REPO")
echo "pulled $REPO -> $MODEL"
$PYTHON -m bitconv pack "$REPO" --format i2s -o "$DEMO/model-i2s.gguf"
$PYTHON -m bitconv inspect "$DEMO/model-i2s.gguf"
$PYTHON -m bitconv verify "$DEMO/model-i2s.gguf" --source "$MODEL"

# 4. Repack the I2_S file to llama.cpp's TQ2_0 without the source, and prove it again.
$PYTHON -m bitconv repack "$DEMO/model-i2s.gguf" --format tq2_0 -o "$DEMO/model-tq2_0.gguf"
$PYTHON -m bitconv verify "$DEMO/model-tq2_0.gguf" --source "$MODEL" --mode llama.cpp
