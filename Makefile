# vidmem: `make repro` runs the pipeline, `make test` runs the tests. Both install whatever is missing first:
# Debian packages (ffmpeg, espeak-ng, a Java runtime), a .venv with pinned Python packages, the DVC project.
# Every step is idempotent: a second run only checks.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian package that provides each command the pipeline calls (g++: the tests run the CUDA kernels' sources
# on CPU threads; chromium: the tests open the report in headless Chromium).
SYSTEM_TOOLS := ffmpeg:ffmpeg ffprobe:ffmpeg espeak-ng:espeak-ng java:openjdk-17-jre-headless g++:g++ \
                chromium:chromium
PYTEST_ARGS ?=
# Stages call `python`, `dvc`, `torchrun`: the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
# This machine's pip config names local index folders that may be absent; drop pip's warnings about them.
QUIET := sed -u '/is ignored: it is neither/d'

.PHONY: all install system venv dvc-init repro test test-all bench gpu-check lock clean-venv

all: test

install: system venv dvc-init

## Debian packages: install only what is missing (apt-get update once, only when something is).
system:
	@missing=""; \
	for pair in $(SYSTEM_TOOLS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

## Python environment: rebuilt when the pins change; the project itself is installed editable, which makes
## the `vidmem` command (pyproject.toml [project.scripts]).
venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; vidmem needs Python 3.11" >&2; exit 1; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt -c constraints.txt 2>&1 | $(QUIET)
	$(BIN)/python -m pip install -q --no-deps -e . 2>&1 | $(QUIET)
	$(BIN)/python -c "import torch, decord, open_clip, zarr, dvc, pycocoevalcap, cupy, ffmpeg" 
	$(BIN)/vidmem --help >/dev/null
	touch $@

## The repository is a DVC project; `.dvc/` is committed, so this only acts on a checkout that lacks it.
dvc-init: venv
	@[ -d .dvc ] || $(BIN)/dvc init -q

## The pipeline, then every family's headline metric against its baseline (reports/index.html has the rest).
repro: install
	$(BIN)/dvc repro
	$(BIN)/python -m vidmem.report.headline

## Two workers, one torch thread each (the tiny DVC pipeline module runs beside the rest: 9 min instead of 13).
TEST_WORKERS ?= 2
test: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## Slow tests too (long SynthVid videos, the full pipeline at default size).
test-all: install
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

## Benchmarks: each prints a ratio against a baseline measured in the same run (README, Performance).
bench: install
	$(BIN)/python -m bench.compress
	$(BIN)/python -m bench.extract
	$(BIN)/python -m bench.kernels --threads 1
	$(BIN)/python -m bench.train
	$(BIN)/python -m bench.caption

## GPU check (< 8 min): install, pytest -m gpu, kernel benchmarks, CM2 step GPU vs CPU; one JSON of results
## (README, Performance: GPU check). Without a GPU it skips the GPU steps and still writes the JSON.
GPU_CHECK_OUT ?= bench/gpu_check.json
gpu-check:
	bench/gpu_check.sh $(GPU_CHECK_OUT)

## Regenerate constraints.txt from the current environment after changing requirements.txt.
lock: venv
	$(BIN)/python -m pip freeze --exclude-editable | grep -v "^vidmem" > constraints.txt

clean-venv:
	rm -rf $(VENV)
