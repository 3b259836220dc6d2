# One entry point for people and CI. Everything that needs libtorch or ONNX Runtime depends on `setup`,
# which installs both from PyPI into a project-local virtualenv (.venv). Nothing has to be exported by hand:
# the variables below point the build at that environment, and build scripts embed the library paths.

SHELL := /bin/bash
ROOT := $(abspath .)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-stamp
GLOO_HEADERS := $(VENV)/gloo/usr/include/gloo/algorithm.h
CARGO ?= cargo
PROFILE_FLAGS := --release
BIN := $(ROOT)/target/release

# torch-sys finds libtorch through the venv's python3; build scripts and tests find the venv through MUST_PYTHON.
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
export MUST_PYTHON := $(PY)

# The built-in example.
WORLD ?= $(ROOT)/out/world
LABEL_CONFIG ?= $(ROOT)/configs/demo-label.toml
SHARDS_OUT ?= $(ROOT)/out/shards
SHARD ?= 0
NUM_SHARDS ?= 4
EVAL_LABEL_CONFIG ?= $(ROOT)/configs/demo-eval-label.toml
TRAIN_CONFIG ?= $(ROOT)/configs/demo-train.toml
# The transfer experiment (MuST Tables 3-5 at CPU scale): full (about 90 min on 2 cores) or smoke (minutes).
EXPERIMENT_SCALE ?= full
EXPERIMENT_OUT ?= $(ROOT)/out/experiment-$(EXPERIMENT_SCALE)

.PHONY: setup build test check fmt clippy demo world teachers img2dataset-fixtures probe plan label label-all render train experiment bench bench-label bench-label-real bench-label-packed real-teachers bench-memory bench-train bench-plan clean-out

setup: $(SETUP_STAMP) $(GLOO_HEADERS)

# `make setup GPU=1`: also the CUDA headers that the trainer's NCCL process group needs to compile
# (`cargo build --release -p trainer --features nccl`); the CUDA torch wheel ships nccl.h and the runtime
# headers but not these two header-only packages. Matches torch's CUDA 13.0 build.
GPU ?= 0
GPU_STAMP := $(VENV)/.gpu-stamp
ifeq ($(GPU),1)
setup: $(GPU_STAMP)
endif
# It also installs ONNX Runtime's GPU build (CUDA 13, like torch's wheel) for the labeler's `provider = "cuda"` /
# `"tensorrt"`: beside the CPU build, in $(VENV)/ort-gpu (the two wheels share a module name), with the NVIDIA
# libraries it needs as wheels; the labeler loads it and preloads those libraries when a GPU provider is asked for.
ORT_GPU_VERSION := 1.31.1
$(GPU_STAMP): $(SETUP_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target $(VENV)/ort-gpu "onnxruntime-gpu==$(ORT_GPU_VERSION)"
	$(PY) -m pip install --quiet --disable-pip-version-check "nvidia-cuda-nvrtc~=13.0" "nvidia-cuda-runtime~=13.0" \
	  "nvidia-cufft~=12.0" "nvidia-curand~=10.0" "nvidia-cudnn-cu13~=9.0"
	@touch $@

# Gloo's C++ headers (for the trainer's c10d shim; the torch wheel lacks them): Debian's libgloo-dev,
# unpacked without root. `apt-get download` needs the package lists; the pool URL is the fall-back.
GLOO_DEB_URL ?= http://deb.debian.org/debian/pool/main/g/gloo/libgloo-dev_0.0~git20220518.5b14351-3_amd64.deb
$(GLOO_HEADERS):
	@rm -rf $(VENV)/gloo.tmp && mkdir -p $(VENV)/gloo.tmp
	cd $(VENV)/gloo.tmp && { apt-get download libgloo-dev >/dev/null 2>&1 || python3 -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], 'libgloo-dev.deb')" '$(GLOO_DEB_URL)'; }
	dpkg -x $(VENV)/gloo.tmp/*.deb $(VENV)/gloo.tmp/root
	@rm -rf $(VENV)/gloo && mkdir -p $(VENV)/gloo && mv $(VENV)/gloo.tmp/root/usr $(VENV)/gloo/usr && rm -rf $(VENV)/gloo.tmp
	@test -f $@ && echo "setup: gloo headers in $(VENV)/gloo/usr/include"

$(SETUP_STAMP): tools/requirements.txt
	@command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
	@$(PY) -c "import torch, onnxruntime; print('setup: torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"
	@touch $@

build: setup
	$(CARGO) build $(PROFILE_FLAGS) --workspace --bins

test: setup
	$(CARGO) test $(PROFILE_FLAGS) --workspace

fmt:
	$(CARGO) fmt --all -- --check

clippy: setup
	$(CARGO) clippy $(PROFILE_FLAGS) --workspace --all-targets -- -D warnings

check: fmt clippy test

world: build
	$(BIN)/world --out $(WORLD)

# Train the demo teachers from scratch (minutes on CPU). Their ONNX files are committed; this re-makes them.
teachers: setup world
	$(PY) tools/teachers/train_teachers.py --store $(WORLD) --out tools/teachers/onnx

# Re-make the img2dataset fixtures of labeler/tests/packed.rs from the world's images (committed; the script
# writes the same bytes each time).
img2dataset-fixtures: setup build
	$(PY) tools/interop/make_img2dataset_fixtures.py --world $(BIN)/world --out labeler/tests/fixtures/img2dataset

$(WORLD)/world.json:
	$(MAKE) build
	$(BIN)/world --out $(WORLD)

probe: build
	$(BIN)/labeler probe --config $(LABEL_CONFIG)

# Freeze the input manifest once; every shard job reads it.
plan: build $(WORLD)/world.json
	$(BIN)/labeler plan --config $(LABEL_CONFIG) --output $(SHARDS_OUT)

# One shard is one batch job: `make label SHARD=k [NUM_SHARDS=N]`. Plans first if nothing is planned yet.
label: build $(WORLD)/world.json
	$(BIN)/labeler run --config $(LABEL_CONFIG) --output $(SHARDS_OUT) --shard $(SHARD) --num-shards $(NUM_SHARDS) --plan-if-missing

label-all: build $(WORLD)/world.json
	@for k in $$(seq 0 $$(($(NUM_SHARDS) - 1))); do \
	  $(BIN)/labeler run --config $(LABEL_CONFIG) --output $(SHARDS_OUT) --shard $$k --num-shards $(NUM_SHARDS) --plan-if-missing || exit 1; \
	done
	$(BIN)/labeler status --output $(SHARDS_OUT)

render: build
	$(BIN)/labeler render --output $(SHARDS_OUT) --to $(ROOT)/out/render --count 12

# Train the student on the demo shards and evaluate it on the world's held-out split (ground truth committed
# as shards by the labeler). Continues from the newest checkpoint in out/train if there is one.
train: build $(WORLD)/world.json
	$(MAKE) label-all
	$(BIN)/labeler run --config $(EVAL_LABEL_CONFIG) --shard 0 --num-shards 1 --plan-if-missing
	$(BIN)/trainer train --config $(TRAIN_CONFIG)

demo: build $(WORLD)/world.json
	$(BIN)/labeler probe --config $(LABEL_CONFIG)
	$(MAKE) label-all
	$(MAKE) render
	$(MAKE) train
	@echo "demo: pseudo labels in $(SHARDS_OUT), pictures in out/render/index.png;"
	@echo "demo: the student's run in out/train (metrics.jsonl, curves.png, checkpoints/)."

# Labeler numbers on 640x480 JPEGs (BENCHMARKS.md): the whole pipeline next to teacher inference alone on the
# same inputs and batches, host-side CPU per image, peak RSS, and a plain Python pipeline on the same images.
# See tools/bench/bench_label.sh.
LABEL_ROUNDS ?= 3
bench-label: build
	CARGO=$(CARGO) PY=$(PY) BIN=$(BIN) BENCH_DIR=$(ROOT)/out/bench LABEL_ROUNDS=$(LABEL_ROUNDS) tools/bench/bench_label.sh
	$(MAKE) bench-label-real bench-label-packed

# The same 512 JPEGs as loose files, one WebDataset tar and one Parquet file. See tools/bench/bench_label_packed.sh.
PACKED_ROUNDS ?= 3
bench-label-packed: build
	PY=$(PY) BIN=$(BIN) BENCH_DIR=$(ROOT)/out/bench PACKED_ROUNDS=$(PACKED_ROUNDS) tools/bench/bench_label_packed.sh

# Real-architecture teachers (random weights, no downloads): tools/export/make_real_teachers.py -> out/real-teachers.
real-teachers: setup
	$(PY) tools/export/make_real_teachers.py --out $(ROOT)/out/real-teachers

# The labeler on real-architecture teachers next to the Python pipeline (host CPU, stages, RSS, workers x threads).
# Needs the images bench-label makes. See tools/bench/bench_label_real.sh.
REAL_IMAGES ?= 128
bench-label-real: build
	CARGO=$(CARGO) PY=$(PY) BIN=$(BIN) BENCH_DIR=$(ROOT)/out/bench REAL_IMAGES=$(REAL_IMAGES) tools/bench/bench_label_real.sh

# Labeler peak memory (BENCHMARKS.md): shards of 1k, 4k and 16k 640x480 JPEGs, and 64 JPEGs of 6000x4000 with
# store_images = true. See tools/bench/bench_memory.sh.
bench-memory: build
	CARGO=$(CARGO) PY=$(PY) BIN=$(BIN) BENCH_DIR=$(ROOT)/out/bench tools/bench/bench_memory.sh

# Trainer numbers (BENCHMARKS.md): loader samples per core at 128 and 640 px crops next to a plain PyTorch
# DataLoader on the same Parquet (shards written once under TRAIN_BENCH_DIR), and the student's training step
# next to the same network in PyTorch eager, alternating for STEP_ROUNDS rounds. See tools/bench/bench_train.sh.
TRAIN_BENCH_DIR ?= $(ROOT)/out/bench
BENCH_THREADS ?= $(shell nproc)
STEP_ROUNDS ?= 2
bench-train: setup
	CARGO=$(CARGO) PY=$(PY) TRAIN_BENCH_DIR=$(TRAIN_BENCH_DIR) BENCH_THREADS=$(BENCH_THREADS) STEP_ROUNDS=$(STEP_ROUNDS) \
	  tools/bench/bench_train.sh

# Planning at scale (BENCHMARKS.md): `labeler plan` from key lists of 1M and 10M synthetic keys (a text list and an
# S3 Inventory report, written once by tools/bench/make_key_list.py), wall time and peak RSS by GNU time, and the
# projection to 300M keys. See tools/bench/bench_plan.sh.
PLAN_SIZES ?= 1000000 10000000
bench-plan: build
	PY=$(PY) BIN=$(BIN) BENCH_DIR=$(ROOT)/out/bench PLAN_SIZES="$(PLAN_SIZES)" tools/bench/bench_plan.sh

# Resumable: re-running skips finished steps. Writes report.md, results.json and one SVG chart per table.
experiment: build
	$(BIN)/experiment --scale $(EXPERIMENT_SCALE) --out $(EXPERIMENT_OUT)

bench: bench-label bench-memory bench-train bench-plan

clean-out:
	rm -rf $(ROOT)/out
