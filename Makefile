# pysparsek: pinned llama.cpp + Sparse-K patch series, built and driven from Python.
# `make help` lists the targets.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
BACKEND ?= cpu
ifeq ($(GGML_CUDA),1)
BACKEND := cuda
endif
PATCH_DIR ?= patches
DEMO_TOPK ?= 64,256
# decode at depth 8192 is where Sparse-K pays on a CPU; depth 0 shows what it costs where it cannot help. (A third
# depth would cost many minutes: llama-bench keeps one filled depth per process and runs every setting's tests
# depth after depth, so two long depths refill the cache at every test)
DEMO_DEPTHS ?= 0,8192
# dense with a quantized K/V cache (what users pick instead): filling a q4_0 cache to depth 8192 takes many
# minutes on 2 cores (prefill with a quantized cache is several times slower), so its speed is measured at 0, 2048
DEMO_CACHE_DEPTHS ?= 0,2048
# decode-regime quality: chunks of 1024 dense prompt tokens + 256 decoded tokens
DEMO_CHUNKS ?= 4
# separate llama-bench processes per setting (bench's default is 3): median and spread over 2 keep the demo within
# 20 minutes on 2 cores; the README's ratios come from bench's default
DEMO_PROCESSES ?= 2

# cmake/ninja installed from PyPI into the venv are found too
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv source check-patches patch-tree refresh-patches stock-build patched-build builds demo-builds \
        demo test regress lint doctor clean distclean

help:
	@echo "make demo            build patched llama.cpp (llama-bench), then pysparsek bench on SmolLM2: the recommended Sparse-K"
	@echo "                     deployment vs dense and dense with q8_0/q4_0 K/V caches (the main job)"
	@echo "make test            build both, run the test suite and the perplexity regression guard (what CI runs)"
	@echo "make regress         only the regression guard (pysparsek regress; --update-baseline after an intended change)"
	@echo "make stock-build     llama.cpp at the pin                 (BACKEND=cpu|cuda, or GGML_CUDA=1)"
	@echo "make patched-build   llama.cpp at the pin + patches/series"
	@echo "make check-patches   apply the series to a clean copy of the pin (PATCH_DIR=... to check another)"
	@echo "make patch-tree      git working copy of pin + series, one commit per patch, in build/patch-tree"
	@echo "make refresh-patches regenerate patches/ from build/patch-tree with git format-patch"
	@echo "make doctor          what would be built and loaded"
	@echo "make lint            ruff"
	@echo "make clean           remove build trees (keeps downloads and ccache); distclean removes all of build/"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(VENV)/bin/pip install -q -e '.[dev,convert]'
	@command -v cmake >/dev/null 2>&1 || $(VENV)/bin/pip install -q cmake
	@command -v ninja >/dev/null 2>&1 || $(VENV)/bin/pip install -q ninja
	touch $@

source: venv
	$(PY) -m pysparsek source

check-patches: venv
	$(PY) -m pysparsek check-patches --patch-dir $(PATCH_DIR)

patch-tree: venv
	$(PY) -m pysparsek patch-tree

refresh-patches: venv
	$(PY) -m pysparsek refresh-patches

stock-build: venv
	$(PY) -m pysparsek build --stock --backend $(BACKEND)

patched-build: venv
	$(PY) -m pysparsek build --patched --backend $(BACKEND)

builds: stock-build patched-build

# only what the demo's `bench` runs: the patched build's llama-bench and libllama (its decode-regime quality runs
# dense as the patched library with Sparse-K off, which tests/test_identity.py holds bit-identical to stock); the
# rest is built by `make builds`, or when a command first needs it. Keeps the demo within 20 minutes of a clean clone
demo-builds: venv
	$(PY) -m pysparsek build --patched --backend $(BACKEND) --only llama-bench --only llama-perplexity

demo: demo-builds
	$(PY) -m pysparsek bench --topk $(DEMO_TOPK) --depths $(DEMO_DEPTHS) --cache-depths $(DEMO_CACHE_DEPTHS) \
		--chunks $(DEMO_CHUNKS) --processes $(DEMO_PROCESSES) --backend $(BACKEND)

# the suite, then the perplexity regression guard against tests/baselines/ (CI runs exactly this)
test: builds
	$(PY) -m pytest -ra --durations=30
	$(PY) -m pysparsek regress

regress: builds
	$(PY) -m pysparsek regress

lint: venv
	$(VENV)/bin/ruff check pysparsek tests

doctor: venv
	$(PY) -m pysparsek doctor

clean:
	rm -rf build/stock build/patched

distclean:
	rm -rf build $(VENV)
