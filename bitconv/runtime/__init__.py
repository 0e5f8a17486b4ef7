"""Pure-numpy reference runtime: executes a packed GGUF file or a source checkpoint.

weights.py loads either into the same in-memory form (GGUF tensor names, codes + multiplier);
model.py runs the forward pass for every family; memory.py chooses how model.py holds the ternary
weights (float32 or int8 codes, or streamed) by the memory available, before anything is loaded.
"""
