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
PIP_PACKAGES := torch==$(TORCH_VERSION) numpy safetensors hypothesis pytest psutil matplotlib scikit-build-core
export PYTHONPATH := $(CURDIR)/python

.PHONY: demo test test-cpp test-python build deps system-deps venv install-check bench clean

demo: build
	$(PY) -m safeload demo

test: build
	$(MAKE) --no-print-directory test-cpp test-python test-sanitize fuzz-smoke

test-cpp: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

test-python: build
	$(PY) fixtures/generate.py --check
	$(PY) -m pytest tests/python -q

build: deps
	@if [ ! -f $(BUILD)/CMakeCache.txt ]; then \
	  cmake -S . -B $(BUILD) -DPython3_EXECUTABLE=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=Release; fi
	cmake --build $(BUILD) --parallel $(JOBS)

deps: system-deps venv

# Installs only what is missing, so a second run costs a second.
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages: $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.deps-installed

$(VENV)/.deps-installed: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch is pinned first and alone, so nothing later can pull another build of it.
	$(PY) -m pip install -q --disable-pip-version-check torch==$(TORCH_VERSION)
	$(PY) -m pip install -q --disable-pip-version-check $(PIP_PACKAGES)
	touch $@

# The README's benchmark: every installed peer against the storage and memory
# limits, cold and warm. The peers are installed beside the pinned torch.
BENCH_PEERS := fastsafetensors runai-model-streamer instanttensor
bench: build
	$(PY) -m pip install -q --disable-pip-version-check $(BENCH_PEERS) torch==$(TORCH_VERSION) \
	  || echo "some peer loaders could not be installed; they will be listed as not installed"
	$(PY) -m safeload bench --size 4GiB --cache-dir bench/out \
	  --json bench/results/cpu.json --plot bench/results/cpu.png

# Builds and installs the package the way users do, into a fresh environment
# that already has torch, then uses it from outside the source tree: the
# installed command, the packaged conformance corpus, a load.
INSTALL_ENV := $(abspath $(BUILD))/install-check
install-check: system-deps
	rm -rf $(INSTALL_ENV) && $(PYTHON) -m venv $(INSTALL_ENV)
	$(INSTALL_ENV)/bin/python -m pip install -q --disable-pip-version-check torch==$(TORCH_VERSION)
	$(INSTALL_ENV)/bin/python -m pip install -q --disable-pip-version-check numpy scikit-build-core hypothesis
	PYTHONPATH= $(INSTALL_ENV)/bin/python -m pip install -q --no-build-isolation --no-deps .
	cd /tmp && PYTHONPATH= $(INSTALL_ENV)/bin/safeload conform --loader safeload_fast --property-cases 0 | tail -3
	cd /tmp && PYTHONPATH= $(INSTALL_ENV)/bin/python -c \
	  "import safeload, torch; print('installed', safeload.__file__, 'torch', torch.__version__)"

clean:
	rm -rf $(BUILD)

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

test-sanitize: system-deps
	@if [ ! -f $(ASAN_BUILD)/CMakeCache.txt ]; then \
	  cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSAFELOAD_SANITIZE=ON \
	    -DSAFELOAD_TORCH=OFF -DSAFELOAD_FUZZ=ON; fi
	cmake --build $(ASAN_BUILD) --parallel $(JOBS)
	$(SANITIZER_ENV) ctest --test-dir $(ASAN_BUILD) --output-on-failure -j $(JOBS)
