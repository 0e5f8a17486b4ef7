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

# 1-2. The "hub" on a free port, and bitconv pointed at it (scripts/fakehub.sh).
WORK=$DEMO
. scripts/fakehub.sh

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
