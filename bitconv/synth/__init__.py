"""Synthetic checkpoints in the exact layouts of the real BitNet repositories.

The Hugging Face Hub is unreachable from our machines, so tests, the demo and the benchmarks run
on checkpoints this package generates deterministically: same config keys, tensor names, dtypes,
packing, sharding and tokenizer files as the real repos, at any size.
"""
