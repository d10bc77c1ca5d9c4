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

.PHONY: all bootstrap configure build test bench clean
all: build

bootstrap:
	@scripts/bootstrap.sh

configure: bootstrap
	@test -f $(BUILD)/build.ninja || $(CMAKE) --preset $(PRESET)

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

bench: build
	@$(BUILD)/bench/fusednorm_bench $(BENCH_ARGS)

clean:
	rm -rf build
