# Sourced by demo.sh and release-demo.sh: serve a checkpoint under repo id $REPO from a local fake
# Hugging Face Hub (tests/support/fakehub.py) on a free port, and point bitconv (through
# huggingface_hub's HF_ENDPOINT) at it with a private cache under $WORK. The checkpoint is the
# directory $SRC if set (demo.sh: the trained models/bitnet-tiny-shakespeare), else the embedded
# tiny 2B4T (-bf16) fixture. Needs PYTHON, WORK, REPO; stops the hub when the calling script exits.
if [ -n "${SRC:-}" ]; then
  mkdir -p "$WORK/hub/$REPO" && cp -R "$SRC"/. "$WORK/hub/$REPO"
else
  $PYTHON -m bitconv make-fixture bitnet-b1.58-2B-4T-bf16 "$WORK/hub/$REPO" >/dev/null
fi
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" $PYTHON -m tests.support.fakehub "$WORK/hub" --port-file "$WORK/hub.port" &
HUB=$!
trap 'kill $HUB 2>/dev/null; wait $HUB 2>/dev/null || true' EXIT INT TERM
n=0
until [ -s "$WORK/hub.port" ]; do   # the port file appears once the server listens
  n=$((n + 1)); [ $n -lt 100 ] || { echo "$0: the fake hub did not start" >&2; exit 1; }
  sleep 0.1
done
HF_ENDPOINT="http://127.0.0.1:$(cat "$WORK/hub.port")"
export HF_ENDPOINT HF_HOME="$WORK/hf_home" HF_HUB_OFFLINE=0
unset HF_TOKEN || true
