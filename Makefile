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

.PHONY: demo test test-cpp test-python build deps system-deps venv install-check fuzz sanitize clean

demo: build
	$(PY) -m safeload demo

test: build
	$(MAKE) --no-print-directory test-cpp test-python

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

# Builds and installs the package the way users do, into a throwaway
# environment that shares the venv's torch, then imports it.
install-check: deps
	rm -rf $(BUILD)/install-check && $(PY) -m venv --system-site-packages $(BUILD)/install-check
	PYTHONPATH= $(BUILD)/install-check/bin/python -m pip install -q --no-build-isolation --no-deps .
	cd /tmp && PYTHONPATH= $(abspath $(BUILD))/install-check/bin/python -c \
	  "import safeload, torch; print('installed', safeload.__file__, 'torch', torch.__version__)"

clean:
	rm -rf $(BUILD)
