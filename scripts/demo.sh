#!/bin/sh
# `make demo`: the whole pipeline, pull -> pack -> inspect -> verify -> run -> repack, with no
# network. A local fake Hugging Face Hub (tests/support/fakehub.py) serves the trained tiny BitNet
# b1.58 in the packed 2B4T layout (models/bitnet-tiny-shakespeare, scripts/train_tiny.py) under a
# repo id of its own; bitconv talks to it through HF_ENDPOINT exactly as it would to
# huggingface.co, with its own HF cache under $DEMO.
set -eu
PYTHON=${PYTHON:-python3}
DEMO=${DEMO:-build/demo}
REPO=bitconv/bitnet-tiny-shakespeare
SRC=models/bitnet-tiny-shakespeare

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

# 4. Real text from the packed file, streamed as it is generated (greedy; Hamlet is held out).
printf '\n--- bitconv run %s (greedy, 64 tokens) ---\n' "$DEMO/model-i2s.gguf"
$PYTHON -m bitconv run "$DEMO/model-i2s.gguf" -p "$(printf 'HAMLET.\nTo be, or not to be')" -n 64
printf '\n---\n\n'

# 5. Repack the I2_S file to llama.cpp's TQ2_0 without the source, and prove it again.
$PYTHON -m bitconv repack "$DEMO/model-i2s.gguf" --format tq2_0 -o "$DEMO/model-tq2_0.gguf"
$PYTHON -m bitconv verify "$DEMO/model-tq2_0.gguf" --source "$MODEL" --mode llama.cpp
