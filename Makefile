# The README's two commands: `make bench` and `make test`. Each bootstraps (Debian packages when root and
# missing, the project-local .venv with Halide, CMake, Ninja), configures with a CMake preset, builds, runs.
# Both are quick when nothing changed: bootstrap is stamp-checked and Ninja rebuilds only what changed.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
CMAKE := $(VENV)/bin/cmake
CTEST := $(VENV)/bin/ctest
PRESET ?= release
BUILD := build/$(PRESET)
BENCH_ARGS ?=
# Test suites rebuilt under sanitizers (CMakePresets.json): asan = AddressSanitizer + UBSan over the whole suite
# but the 2 GiB test, tsan = ThreadSanitizer over the concurrency tests.
SANITIZER_PRESETS ?= asan tsan
# Cross-compiled presets, tested under user-mode emulation: aarch64 = the NEON kernels, runtime and tests for
# arm-64 Linux, run under qemu-aarch64 (all but the 2 GiB test). Their generator is the release build's.
CROSS_PRESETS ?= aarch64

.PHONY: all bootstrap configure build test bench tune fuzz demo clean
all: build

# `make bench` bootstraps in its own mode (BOOTSTRAP_MODE, passed down to its prerequisites): libtorch-dev for the
# PyTorch rows, which `make build` and `make test` do not install.
BOOTSTRAP_MODE ?=
bootstrap:
	@scripts/bootstrap.sh $(BOOTSTRAP_MODE)

# A build configured before libtorch was installed has it as NOTFOUND in its cache: configured again for the bench,
# so that its PyTorch rows are built.
configure: bootstrap
	@test -f $(BUILD)/build.ninja || $(CMAKE) --preset $(PRESET)
	@if [[ "$(BOOTSTRAP_MODE)" == bench ]] && ! grep -q '^Torch_DIR:PATH=/' $(BUILD)/CMakeCache.txt; then \
	  $(CMAKE) --preset $(PRESET) >/dev/null; \
	fi

build: configure
	@$(CMAKE) --build --preset $(PRESET)

test: build
	@$(CTEST) --preset $(PRESET)
	@for preset in $(SANITIZER_PRESETS); do \
	  echo "== ctest --preset $$preset"; \
	  test -f build/$$preset/build.ninja || $(CMAKE) --preset $$preset >/dev/null || exit 1; \
	  $(CMAKE) --build --preset $$preset || exit 1; \
	  $(CTEST) --preset $$preset || exit 1; \
	done
	@for preset in $(CROSS_PRESETS); do \
	  echo "== ctest --preset $$preset (under qemu)"; \
	  scripts/bootstrap.sh $$preset || exit 1; \
	  test -f build/$$preset/build.ninja || $(CMAKE) --preset $$preset >/dev/null || exit 1; \
	  $(CMAKE) --build --preset $$preset || exit 1; \
	  $(CTEST) --preset $$preset || exit 1; \
	done

# The bench's JSON goes to BENCH_JSON (rather than a --json in BENCH_ARGS), which the plots are drawn from.
# BENCH_RUNS=3: three runs one after the other (the first's JSON is BENCH_JSON, the others BENCH_JSON with .2, .3
# before .json), plotted as medians with the runs' spread. Then, where the component mpi is built, SyncBatchNorm over
# MPI with 2 and 4 processes against the local BatchNorm (bench/sync_bench.cpp), into $(BUILD)/bench/sync.md.
BENCH_JSON ?= $(BUILD)/bench/results.json
BENCH_RUNS ?= 1
bench: BOOTSTRAP_MODE = bench
bench: build
	@set -e; jsons=(); \
	for run in $$(seq 1 $(BENCH_RUNS)); do \
	  json=$(BENCH_JSON); if (( run > 1 )); then json=$${json%.json}.$$run.json; fi; \
	  $(BUILD)/bench/fusednorm_bench --json $$json $(BENCH_ARGS); jsons+=($$json); \
	done; \
	$(VENV)/bin/python scripts/plot_bench.py "$${jsons[@]}" --out $(BUILD)/bench/plots
	@if [[ -x $(BUILD)/bench/fusednorm_sync_bench ]]; then \
	  for processes in 2 4; do \
	    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader \
	    OMPI_MCA_btl_vader_single_copy_mechanism=none mpirun -np $$processes --oversubscribe \
	      $(BUILD)/bench/fusednorm_sync_bench; echo; \
	  done | tee $(BUILD)/bench/sync.md; \
	fi

# Tuned dispatch (docs/TUNING.md): times every variant of each kernel per shape class on this machine and
# writes the table dispatch loads with FUSEDNORM_TUNING=<table> or fusednorm::load_tuning(): the cache and llc
# classes, a few minutes. TUNE_ARGS=--quick: one shape per class, short timing; TUNE_ARGS=--dram: the dram class
# too (seconds per kernel, more where the last-level cache is big).
TUNE_TABLE ?= $(BUILD)/bench/tuning.tsv
TUNE_ARGS ?=
tune: build
	@$(BUILD)/bench/fusednorm_bench --tune --tuning-table $(TUNE_TABLE) $(TUNE_ARGS)

# Fuzzing (tests/fuzz/README.md): the libFuzzer targets built by clang under ASan + UBSan (preset fuzz, build/fuzz),
# each run for FUZZ_SECONDS, one per core at a time. `make test` runs the same targets over their seed corpus only.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= state_dict tuning call
fuzz: bootstrap
	@scripts/bootstrap.sh fuzz
	@test -f build/fuzz/build.ninja || $(CMAKE) --preset fuzz >/dev/null
	@$(CMAKE) --build --preset fuzz
	@scripts/fuzz.sh build/fuzz $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# The seed tutorial's claims, measured (docs/SEED_CLAIMS.md): examples/train_mlp trains its model on the digits in
# every experiment over DEMO_SEEDS seeds (seconds per experiment), then scripts/plot_demo.py writes the plots and
# report.md into build/<preset>/demo. Builds only the example and what it links.
DEMO_SEEDS ?= 10
DEMO_DIR := $(BUILD)/demo
demo: configure
	@$(CMAKE) --build --preset $(PRESET) --target train_mlp
	@mkdir -p $(DEMO_DIR)
	@$(BUILD)/examples/train_mlp --experiment all --seeds $(DEMO_SEEDS) --csv $(DEMO_DIR)/runs.csv
	@$(VENV)/bin/python scripts/plot_demo.py $(DEMO_DIR)/runs.csv --out $(DEMO_DIR)

clean:
	rm -rf build
