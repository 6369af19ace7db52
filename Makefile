# lowbit-asr — every target installs what it needs first (`make install` is idempotent).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The one list of Debian packages (also read by the corpus manifest): first word of each line.
DEB_PACKAGES := $(shell sed -e 's/\#.*//' src/lowbit_asr/data/debian-packages.txt | awk 'NF {print $$1}')
PYTEST_ARGS ?=

.PHONY: help install debs test test-all lint benchmark data reproduce clean

help: ## List every target
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) debs ## Create .venv (Python 3.11) with torch 2.14.1, torchaudio 2.11.0 and the package [asr,dev]

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: pip takes the build that lies on this machine's disk.
	$(PY) -m pip install --quiet torch==2.14.1 torchaudio==2.11.0
	$(PY) -m pip install --quiet -e '.[asr,dev]'
	@touch $(STAMP)

debs: ## Install the Debian packages (TTS voices, Austen texts) when root; else name them
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null; \
	else \
	  echo "lowbit-asr needs these Debian packages; run as root:"; \
	  echo "  sudo apt-get install -y $$missing"; exit 1; \
	fi

test: install ## Run the default test suite (fast, CPU)
	$(PY) -m pytest -m "not slow and not gpu" -n 2 $(PYTEST_ARGS)

test-all: install ## Run every test, slow ones included
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

lint: install ## ruff
	$(VENV)/bin/ruff check src tests benchmarks

benchmark: install ## Print the QAT-overhead table
	$(PY) benchmarks/qat_overhead.py

CORPUS_SIZE ?= mini
CORPUS_SEED ?= 0
data: install ## Generate the embedded TTS corpus (CORPUS_SIZE=mini|small|tiny, CORPUS_SEED=0) in data/
	$(VENV)/bin/lowbit-asr corpus --size $(CORPUS_SIZE) --seed $(CORPUS_SEED)

# AVX2 kernels on every x86-64 CPU (ATen AVX2, oneDNN capped at AVX2, MKL's AVX2 path), as on the
# AVX2-only machine that trained RESULTS.md's float stage: an AVX512 EPYC with them reproduced
# that float stage and a QAT grid point to every published digit (RESULTS.md).
# `make reproduce CPU_NUMERICS=` runs the machine's native kernels instead. Mirrors
# lowbit_asr.train.results.PORTABLE_CPU_NUMERICS (tests/train/test_numerics.py checks they agree).
CPU_NUMERICS ?= ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2
DATASET ?= embedded_mini
DATA_ROOT ?=
TRAINER ?= cpu
EXPERIMENT ?= $(if $(filter librispeech,$(DATASET)),librispeech,mini)
SEEDS ?= 1
FLOAT_SEEDS ?= 0
reproduce: install ## Data -> float -> QAT grid -> frontier -> RESULTS.md (DATASET=librispeech DATA_ROOT=… TRAINER=ddp SEEDS=3 FLOAT_SEEDS=1)
	env $(CPU_NUMERICS) $(VENV)/bin/lowbit-asr reproduce --dataset $(DATASET) --trainer $(TRAINER) \
	  --float-experiment float_$(EXPERIMENT) --qat-experiment qat_$(EXPERIMENT) --seeds $(SEEDS) \
	  $(if $(filter 1,$(FLOAT_SEEDS)),--float-seeds) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

clean: ## Remove build and run artefacts (keeps .venv and data/)
	rm -rf .pytest_cache .ruff_cache outputs multirun lightning_logs wandb
