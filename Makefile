# bitconv developer targets. `make setup demo` on a fresh machine shows the whole job.
PYTHON ?= python3
DEMO   := build/demo

.PHONY: setup test demo fixtures bench release release-demo clean

setup:  ## install bitconv and its test dependencies (editable; builds llama-cpp-python, ~9 min once)
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
	  $(PYTHON) -m pip install -q -e '.[dev]'

test:   ## the test suite (no network needed)
	$(PYTHON) -m pytest

fixtures:  ## regenerate the tiny checkpoints under tests/data (deterministic)
	for n in bitnet_b1_58-large bitnet-b1.58-2B-4T bitnet-b1.58-2B-4T-bf16 Llama3-8B-1.58-100B-tokens; do \
	  $(PYTHON) -m bitconv make-fixture $$n tests/data/$$n >/dev/null || exit 1; done

demo:   ## pull the embedded tiny 2B4T model from a local fake hub, pack it to I2_S, inspect, verify
	PYTHON=$(PYTHON) DEMO=$(DEMO) sh scripts/demo.sh

bench:  ## full-size benchmarks (generates multi-GB inputs under build/bench)
	$(PYTHON) bench/bench_pack.py
	$(PYTHON) bench/bench_runtime.py

# Release pipelines: one artifact directory per recipe, rebuilt only when inputs change.
RECIPES ?= $(wildcard recipes/bitnet*.toml recipes/Llama3*.toml)
release: $(RECIPES:recipes/%.toml=release/%/SHA256SUMS)  ## release every recipe (needs the hub)
release/%/SHA256SUMS: recipes/%.toml
	$(PYTHON) -m bitconv release $< --out release/$*

release-demo:  ## release recipes/demo.toml from the local fake hub (no network)
	PYTHON=$(PYTHON) sh scripts/release-demo.sh

clean:
	rm -rf build
