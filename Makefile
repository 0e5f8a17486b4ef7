# bitconv developer targets. `make setup demo` on a fresh machine shows the whole job.
#
# Everything runs in a project virtual environment ($(VENV)), so an externally managed system
# Python (PEP 668) is never touched. `setup` installs what the main job needs (a minute or two);
# the test peers (transformers + torch CPU, llama-cpp-python built from its sdist, ~9-20 min the
# first time, cached by pip afterwards) are added by the first `make test`.
SYSPYTHON ?= python3
VENV      ?= .venv
PYTHON    := $(VENV)/bin/python
DEMO      := build/demo
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF

.PHONY: setup test test-deps lint demo fixtures train-tiny bench release release-demo clean

setup: $(VENV)/.bitconv-setup  ## a project venv with bitconv and what the main job needs

$(VENV)/.bitconv-setup: pyproject.toml
	test -x $(PYTHON) || $(SYSPYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install -q -e .
	touch $@

test-deps: $(VENV)/.bitconv-test-deps  ## the test peers and tools (once; pip's cache keeps the builds)

$(VENV)/.bitconv-test-deps: $(VENV)/.bitconv-setup pyproject.toml
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PYTHON) -m pip install -q -e '.[dev]'
	touch $@

test: test-deps  ## the test suite (no network needed)
	$(PYTHON) -m pytest

lint: test-deps  ## ruff and mypy (strict on bitconv/)
	$(PYTHON) -m ruff check bitconv tests bench scripts
	$(PYTHON) -m mypy

fixtures: setup  ## regenerate the tiny checkpoints under tests/data (deterministic)
	for n in bitnet_b1_58-large bitnet-b1.58-2B-4T bitnet-b1.58-2B-4T-bf16 Llama3-8B-1.58-100B-tokens; do \
	  $(PYTHON) -m bitconv make-fixture $$n tests/data/$$n >/dev/null || exit 1; done

demo: setup  ## pull the trained tiny 2B4T model from a local fake hub, pack it to I2_S, inspect, verify, run
	PYTHON="$(PYTHON)" DEMO="$(DEMO)" sh scripts/demo.sh

train-tiny: test-deps  ## retrain models/bitnet-tiny-shakespeare[-bf16] (scripts/train_tiny.py; ~20 min, 1 thread)
	$(PYTHON) scripts/train_tiny.py --out models

bench: test-deps  ## full-size benchmarks (generates multi-GB inputs under build/bench)
	$(PYTHON) bench/bench_pack.py
	$(PYTHON) bench/bench_runtime.py

# Release pipelines: one artifact directory per recipe, rebuilt only when inputs change.
RECIPES ?= $(wildcard recipes/bitnet*.toml recipes/Llama3*.toml)
release: $(RECIPES:recipes/%.toml=release/%/SHA256SUMS)  ## release every recipe (needs the hub)
release/%/SHA256SUMS: recipes/%.toml | setup
	$(PYTHON) -m bitconv release $< --out release/$*

release-demo: setup  ## release recipes/demo.toml from the local fake hub (no network)
	PYTHON="$(PYTHON)" sh scripts/release-demo.sh

clean:
	rm -rf build
