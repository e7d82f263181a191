# The two commands a newcomer runs: `make demo` and `make test`.
# Each creates .venv if missing, installs torch first (pinned), then the package with its test extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmcl-installed

.PHONY: demo test test-gpu lint setup clean chromium

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Debian's Chromium, for the search page's browser test (tests/serve/test_browser.py).
chromium:
	command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

setup: $(STAMP) chromium

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests gpu_tests benchmarks
	$(VENV)/bin/ruff format --check src tests gpu_tests benchmarks

# The acceleration tests once more on the path of CPUs without AMX (most AMD and older Intel
# CPUs): mmcl's kernels off and oneDNN capped at AVX-512 BF16. Then `accelerate` on the path of
# CPUs with no bf16 instructions at all: oneDNN and PyTorch's own kernels capped at AVX2, where
# bf16 is emulated. pytest fails the target if a
# test fails, or if none runs (exit code 5).
ACCELERATION_TESTS := tests/nn/test_accelerate.py tests/nn/test_inference_shortcuts.py \
	tests/nn/test_kernels.py tests/nn/test_linear_kernel.py tests/nn/test_streams.py \
	tests/models/test_inference_paths.py

# The suite on 2 workers (pytest-xdist), a test file to a worker; each worker runs torch on
# one thread (tests/conftest.py), so the two share the cores instead of waiting on each other.
test: lint chromium
	$(PY) -m pytest -q -n 2 --dist loadfile
	MMCL_NATIVE_KERNELS=0 ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 $(PY) -m pytest -q \
		-k "not compiled and not benchmark and not RN50" $(ACCELERATION_TESTS)
	ATEN_CPU_CAPABILITY=avx2 MMCL_NATIVE_KERNELS=0 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q \
		-k "not compiled and not benchmark and not RN50" tests/nn/test_accelerate.py

# What only a CUDA GPU can check (gpu_tests/): never part of `make test`, since CI has no GPU.
test-gpu: $(STAMP)
	$(PY) -m pytest -q gpu_tests

demo: $(STAMP)
	$(PY) -m mmcl.demo

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
