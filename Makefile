# Two commands for users: `make demo` and `make test`. Both set up everything
# they need (system packages, a virtual environment, the build) and are safe
# to run again.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD ?= build
JOBS ?= $(shell nproc)
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
APT_PACKAGES := cmake g++ nlohmann-json3-dev libgtest-dev clang-14 libclang-rt-14-dev libfuzzer-14-dev
# The Python dependencies are listed once, in pyproject.toml; the development
# environment gets the runtime ones, these extras and the build requirements.
DEV_EXTRAS := test bench demo
export PYTHONPATH := $(CURDIR)/python
# Absolute paths made from CURDIR, not $(abspath): make splits words at spaces, and a
# checkout may sit in a directory with one. Recipes quote them.
absolute = $(if $(filter /%,$(firstword $(1))),$(1),$(CURDIR)/$(1))
PY_ABS := $(call absolute,$(PY))
BUILD_ABS := $(call absolute,$(BUILD))

# Prints pyproject.toml's requirements except torch: the runtime dependencies (torch is
# pinned at build time to the installed one),
# the extras named as arguments, then the build requirements (with
# --no-build-isolation they must be installed). Needs Python 3.11+ (tomllib).
define PYPROJECT_REQUIREMENTS
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
deps = list(project["tool"]["scikit-build"]["metadata"]["dependencies"]["requires"])
for extra in sys.argv[1:]:
    deps += project["project"]["optional-dependencies"][extra]
deps += project["build-system"]["requires"]
print(" ".join(dict.fromkeys(d for d in deps if d.split(">")[0].split("=")[0].strip() != "torch")))
endef
export PYPROJECT_REQUIREMENTS

.PHONY: demo test test-cpp test-python test-interpose test-package build deps system-deps venv develop install-check bench clean \
  device-prep device-check

demo: build
	$(PY) -m safeload demo

test: build
	$(MAKE) --no-print-directory test-cpp test-python test-interpose test-package test-sanitize fuzz-smoke

test-cpp: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

test-python: build
	$(PY) fixtures/generate.py --check
	$(PY) -m pytest tests/python -q

build: deps
	@if [ ! -f $(BUILD)/CMakeCache.txt ]; then \
	  cmake -S . -B $(BUILD) -DPython3_EXECUTABLE="$(PY_ABS)" -DCMAKE_BUILD_TYPE=Release; fi
	cmake --build $(BUILD) --parallel $(JOBS)
	@$(MAKE) --no-print-directory develop

# patch()'s constructor routing (python/src/interpose.cpp) against upstream's real safe_open
# under other Pythons than the environment's, for which safeload's own module is not built
# (torch is installed for the environment's Python only): the routing alone, built as
# tests/interpose/probe.cpp, per MINOR:SAFETENSORS case, in an environment of its own. The
# interpreter is pythonX.Y on the PATH or pyenv's; one not installed is reported and skipped.
# The environment's own Python runs the same check on safeload._C.
INTERPOSE_CASES ?= 3.12:0.8.0 3.12:0.9.0rc1 3.13:0.8.0
INTERPOSE_BUILD := $(BUILD_ABS)/interpose
test-interpose: build
	$(PY) tests/interpose/check.py safeload._C
	@for case in $(INTERPOSE_CASES); do \
	  minor=$${case%%:*}; version=$${case#*:}; env="$(INTERPOSE_BUILD)/$$minor-$$version"; python=; \
	  for c in python$$minor $$(ls -d "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/$$minor.*/bin/python$$minor 2>/dev/null \
	      | sort -V | tail -1); do if "$$c" -c '' 2>/dev/null; then python=$$c; break; fi; done; \
	  if [ -z "$$python" ]; then echo "test-interpose: no Python $$minor here; skipped"; continue; fi; \
	  if [ ! -f "$$env/.deps-installed" ]; then \
	    rm -rf "$$env" && "$$python" -m venv "$$env" && \
	    "$$env/bin/python" -m pip install -q --disable-pip-version-check pybind11 numpy "safetensors==$$version" && \
	    touch "$$env/.deps-installed" || exit 1; fi; \
	  ext=$$("$$env/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))'); \
	  $(CXX) -O1 -std=c++17 -shared -fPIC -Wall -Wextra -Werror -Ipython/src $$("$$env/bin/python" -m pybind11 --includes) \
	    tests/interpose/probe.cpp python/src/interpose.cpp -o "$$env/_interpose_probe$$ext" || exit 1; \
	  PYTHONPATH="$$env" "$$env/bin/python" tests/interpose/check.py _interpose_probe || exit 1; \
	done

# The C++ package as a consumer sees it: install it from $(BUILD) into a
# prefix, build examples/cpp against it with find_package(safeload), run it.
PKG_PREFIX := $(BUILD_ABS)/prefix
EXAMPLE_BUILD := $(BUILD)/example
EXAMPLE_CASE := y_dtype_all_in_one_file
test-package: build
	cmake --install $(BUILD) --prefix "$(PKG_PREFIX)" > $(BUILD)/install-package.log
	@if [ ! -f $(EXAMPLE_BUILD)/CMakeCache.txt ]; then \
	  cmake -S examples/cpp -B $(EXAMPLE_BUILD) -DCMAKE_BUILD_TYPE=Release \
	    -DCMAKE_PREFIX_PATH="$(PKG_PREFIX);$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	    > $(BUILD)/example-configure.log 2>&1 || { cat $(BUILD)/example-configure.log; exit 1; }; fi
	cmake --build $(EXAMPLE_BUILD) --parallel $(JOBS)
	$(EXAMPLE_BUILD)/list_tensors fixtures/corpus/$(EXAMPLE_CASE).safetensors \
	  | $(PY) examples/cpp/check_output.py fixtures/manifest.json $(EXAMPLE_CASE)

deps: system-deps venv

# Installs only what is missing, so a second run costs a second.
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages: $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	  if [ -n "$$SUDO" ] && ! sudo -n true 2>/dev/null; then \
	    echo "make needs these system packages and cannot install them as $$(id -un) (no password-less sudo):" \
	      "$$missing. Install them as root: apt-get install $$missing" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.deps-installed

$(VENV)/.deps-installed: Makefile pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch is pinned first and alone, so nothing later can pull another build of it.
	$(PY) -m pip install -q --disable-pip-version-check torch==$(TORCH_VERSION)
	$(PY) -m pip install -q --disable-pip-version-check torch==$(TORCH_VERSION) \
	  $$($(PY) -c "$$PYPROJECT_REQUIREMENTS" $(DEV_EXTRAS))
	touch $@

# The development environment runs the source tree with the in-place _C:
# `import safeload` and $(VENV)/bin/safeload work from any directory without
# PYTHONPATH, and SAFELOAD_PATCH=1 works as in an installed package. Python
# reads .pth files in name order: the source tree's comes before the hook's.
# The command starts as a shell script that execs the interpreter (a #! line
# cannot hold a path with a space), as pip's own launchers do.
define DEVELOP_SCRIPT
#!/bin/sh
'''exec' "$(PY_ABS)" "$$0" "$$@"
' '''
import sys
from safeload.cli import main
sys.exit(main())
endef
export DEVELOP_SCRIPT
develop: venv
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))'); \
	put() { cmp -s - "$$1" 2>/dev/null <<< "$$2" || { printf '%s\n' "$$2" > "$$1"; echo "wrote $$1"; }; }; \
	put "$$site/_safeload_source_tree.pth" "$(CURDIR)/python"; \
	put "$$site/safeload-autopatch.pth" "$$(cat python/safeload/safeload-autopatch.pth)"; \
	put $(VENV)/bin/safeload "$$DEVELOP_SCRIPT" && chmod +x $(VENV)/bin/safeload

# The README's benchmark: every installed peer against the storage and memory
# limits, cold and warm. The peers are installed beside the pinned torch.
# safetensors 0.9 cannot share the environment with the pinned 0.8, so it gets
# one of its own (same Python and torch), which the benchmark is told about.
BENCH_PEERS := fastsafetensors runai-model-streamer instanttensor
BENCH_ST09 := $(BUILD_ABS)/bench-st09
bench: build
	$(PY) -m pip install -q --disable-pip-version-check $(BENCH_PEERS) matplotlib torch==$(TORCH_VERSION) \
	  || echo "some peer loaders could not be installed; they will be listed as not installed"
	test -x "$(BENCH_ST09)/bin/python" || $(PYTHON) -m venv "$(BENCH_ST09)"
	"$(BENCH_ST09)/bin/python" -m pip install -q --disable-pip-version-check "safetensors>=0.9.0rc1,<0.10" numpy \
	  torch==$(TORCH_VERSION) || echo "safetensors 0.9 could not be installed; its rows will say so"
	$(PY) -m safeload bench --size 4GiB --cache-dir bench/out --python "st09=$(BENCH_ST09)/bin/python" \
	  --json bench/results/cpu.json --plot bench/results/cpu.png

# Builds and installs the package the way users do, into a fresh environment
# that already has torch: the build requirements, then a plain
# `pip install --no-build-isolation .` that brings the dependencies pyproject.toml
# declares and nothing else. Then, from outside the source tree: the installed
# command with the packaged corpus and property-based cases, a load, and the
# SAFELOAD_PATCH=1 start-up hook (with upstream safetensors installed beside it).
INSTALL_ENV := $(BUILD_ABS)/install-check
INSTALL_PY := $(INSTALL_ENV)/bin/python
install-check: system-deps
	rm -rf "$(INSTALL_ENV)" && $(PYTHON) -m venv "$(INSTALL_ENV)"
	"$(INSTALL_PY)" -m pip install -q --disable-pip-version-check torch==$(TORCH_VERSION)
	"$(INSTALL_PY)" -m pip install -q --disable-pip-version-check torch==$(TORCH_VERSION) \
	  $$(python3 -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
	PYTHONPATH= "$(INSTALL_PY)" -m pip install -q --disable-pip-version-check --no-build-isolation . torch==$(TORCH_VERSION)
	set -o pipefail; cd /tmp && PYTHONPATH= "$(INSTALL_ENV)/bin/safeload" conform --loader safeload_fast --property-cases 20 | tail -3
	cd /tmp && PYTHONPATH= "$(INSTALL_PY)" -c \
	  "import safeload, torch; print('installed', safeload.__file__, 'torch', torch.__version__)"
	cd /tmp && PYTHONPATH= "$(INSTALL_PY)" -c "import importlib.metadata as m; \
	  pin = [r for r in m.requires('safeload') if r.startswith('torch')]; \
	  assert pin == ['torch==$(TORCH_VERSION)'], pin; print('the package requires', pin[0])"
	test -f "$$("$(INSTALL_PY)" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/safeload-autopatch.pth"
	"$(INSTALL_PY)" -m pip install -q --disable-pip-version-check safetensors torch==$(TORCH_VERSION)
	cd /tmp && PYTHONPATH= SAFELOAD_PATCH=1 "$(INSTALL_PY)" -c $(AUTOPATCH_CHECK) "$(CURDIR)/fixtures/corpus/$(EXAMPLE_CASE).safetensors"

# Importing safetensors.torch must have patched it, and a load through it must
# be served by safeload (safeload.patch the module; the package's `patch` is the function).
# backend="pread": a warm file asked for with upstream's default ("mmap") is left to
# upstream's mapping by design.
AUTOPATCH_CHECK := "import importlib, sys, safetensors.torch as t; p = importlib.import_module('safeload.patch'); \
  assert p.is_patched(), 'SAFELOAD_PATCH=1 did not patch safetensors.torch'; \
  n = len(t.load_file(sys.argv[1], backend='pread')); assert p.calls().get('load_file') == 1, p.calls(); \
  print('SAFELOAD_PATCH=1: safetensors.torch.load_file served by safeload,', n, 'tensors')"

clean:
	rm -rf $(BUILD)

# The over-4-GiB conformance tier, outside make test (it writes a 4 GiB file, about 9 GiB of
# disk and memory): safeload's loader, then a loader with 32-bit offsets that it must catch.
.PHONY: conform-large
conform-large: build
	SAFELOAD_CONFORM_LARGE=1 $(PY) -m pytest tests/python/test_conformance_checks.py -q -k large_tier

# The header's JSON reader against simdjson's On-Demand API (bench/json_reader.cpp; the
# figures are in core/json.h): the corpus, a 1,000,000-tensor header and the fuzz inputs
# (run make fuzz-smoke first for more of them).
.PHONY: bench-json
bench-json: build
	@dpkg -s libsimdjson-dev >/dev/null 2>&1 || $(MAKE) --no-print-directory system-deps APT_PACKAGES=libsimdjson-dev
	$(CXX) -O2 -std=c++17 -DSIMDJSON_EXCEPTIONS=0 -Iinclude bench/json_reader.cpp $(BUILD)/libsafeload_core.a \
	  -lsimdjson -o $(BUILD)/bench-json
	$(BUILD)/bench-json fixtures/corpus fuzz/regressions $(wildcard $(FUZZ_BUILD)/corpus/*)

# ---------------------------------------------------------------------------
# The device check (bench/device_check.py, bench/README.md "On a GPU machine").
#   make device-prep              here, with network: the peers' wheels for the GPU machine's
#                                 Python 3.12 into .whl/, the JSON headers into .deps/
#   make device-check OUT=DIR     there (carry .whl and .deps): build, CUDA tests, conformance,
#                                 benchmarks, each time-boxed, within 8 minutes
#   make device-check OUT=DIR DRY=1   anywhere: the same steps, the device parts skipped
DEVICE_PYTHON ?= python3
DEVICE_WHEELS := safetensors==0.9.0rc1 fastsafetensors==0.5.0 instanttensor==0.2.2
DEVICE_PLATFORMS := $(foreach n,17 24 27 28 31 34 35,--platform manylinux_2_$(n)_x86_64) --platform manylinux2014_x86_64
device-prep:
	mkdir -p .whl .deps/nlohmann/usr/include .deps/nlohmann/usr/share/cmake
	$(PYTHON) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp $(DEVICE_PLATFORMS) -d .whl $(DEVICE_WHEELS)
	cp -r /usr/include/nlohmann .deps/nlohmann/usr/include/
	cp -r /usr/share/cmake/nlohmann_json .deps/nlohmann/usr/share/cmake/
	@ls .whl

device-check:
	@test -n "$(OUT)" || { echo "make device-check needs OUT=DIR (where the results go)"; exit 2; }
	$(DEVICE_PYTHON) bench/device_check.py --out "$(OUT)" $(if $(DRY),--dry-run)

# ---------------------------------------------------------------------------
# Fuzzing and the sanitizer build (fuzz/README.md).
#   make fuzz-smoke     each fuzz target for FUZZ_SMOKE_SECONDS + corpus replay (CI)
#   make fuzz           the long run: each target for FUZZ_SECONDS, niced
#   make test-sanitize  the torch-free C++ tests and fuzz replays under ASan + UBSan
FUZZ_BUILD ?= build-fuzz
ASAN_BUILD ?= build-asan
FUZZ_CXX ?= clang++-14
FUZZ_TARGETS := fuzz_header fuzz_load
FUZZ_SMOKE_SECONDS ?= 25
FUZZ_SECONDS ?= 3600
FUZZ_FLAGS := -dict=fuzz/safetensors.dict -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
FUZZ_SEEDS := fixtures/corpus fuzz/regressions
SANITIZER_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

.PHONY: fuzz-build fuzz-smoke fuzz-replay test-sanitize

fuzz-build: system-deps
	@if [ ! -f $(FUZZ_BUILD)/CMakeCache.txt ]; then \
	  cmake -S . -B $(FUZZ_BUILD) -DCMAKE_CXX_COMPILER=$(FUZZ_CXX) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    -DSAFELOAD_TORCH=OFF -DSAFELOAD_TESTS=OFF -DSAFELOAD_FUZZ=ON; fi
	cmake --build $(FUZZ_BUILD) --parallel $(JOBS) --target $(FUZZ_TARGETS)

# Every seed and regression input once, mutating nothing.
fuzz-replay: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  $(FUZZ_BUILD)/fuzz/$$t -runs=0 $(FUZZ_SEEDS) > $(FUZZ_BUILD)/fuzz-replay-$$t.log 2>&1 \
	    || { tail -60 $(FUZZ_BUILD)/fuzz-replay-$$t.log; exit 1; }; \
	  echo "$$t: $$(grep -E '^Done [0-9]+ runs' $(FUZZ_BUILD)/fuzz-replay-$$t.log)"; done

# New inputs go to $(FUZZ_BUILD)/corpus/<target>, findings to $(FUZZ_BUILD)/findings/.
fuzz-smoke: fuzz-replay
	@mkdir -p $(FUZZ_BUILD)/findings
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t; \
	  echo "fuzzing $$t for $(FUZZ_SMOKE_SECONDS) s"; \
	  $(FUZZ_BUILD)/fuzz/$$t $(FUZZ_FLAGS) -max_total_time=$(FUZZ_SMOKE_SECONDS) \
	    -artifact_prefix=$(FUZZ_BUILD)/findings/$$t- $(FUZZ_BUILD)/corpus/$$t $(FUZZ_SEEDS) \
	    > $(FUZZ_BUILD)/fuzz-smoke-$$t.log 2>&1 \
	    || { tail -60 $(FUZZ_BUILD)/fuzz-smoke-$$t.log; exit 1; }; \
	  grep -E '^#[0-9]+\s+DONE|stat::number_of_executed_units' $(FUZZ_BUILD)/fuzz-smoke-$$t.log; \
	done

fuzz: fuzz-replay
	@mkdir -p $(FUZZ_BUILD)/findings
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t; \
	  echo "fuzzing $$t for $(FUZZ_SECONDS) s (log: $(FUZZ_BUILD)/fuzz-$$t.log)"; \
	  nice -n 19 $(FUZZ_BUILD)/fuzz/$$t $(FUZZ_FLAGS) -max_total_time=$(FUZZ_SECONDS) \
	    -artifact_prefix=$(FUZZ_BUILD)/findings/$$t- $(FUZZ_BUILD)/corpus/$$t $(FUZZ_SEEDS) \
	    > $(FUZZ_BUILD)/fuzz-$$t.log 2>&1 \
	    || { tail -60 $(FUZZ_BUILD)/fuzz-$$t.log; exit 1; }; \
	  grep -E '^#[0-9]+\s+DONE|stat::' $(FUZZ_BUILD)/fuzz-$$t.log; \
	done

# The fault-injection and robustness suites' longer sweep (more read calls,
# files and concurrency than make test runs).
.PHONY: test-faults-long
test-faults-long: build
	SAFELOAD_FAULT_SWEEP=1 $(PY) -m pytest tests/python/test_faults.py tests/python/test_robustness.py -q

test-sanitize: system-deps
	@if [ ! -f $(ASAN_BUILD)/CMakeCache.txt ]; then \
	  cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSAFELOAD_SANITIZE=ON \
	    -DSAFELOAD_TORCH=OFF -DSAFELOAD_FUZZ=ON; fi
	cmake --build $(ASAN_BUILD) --parallel $(JOBS)
	$(SANITIZER_ENV) ctest --test-dir $(ASAN_BUILD) --output-on-failure -j $(JOBS)
