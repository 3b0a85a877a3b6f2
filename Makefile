# The two commands of the README:  `make demo`  and  `make test`.
# Each sets up on first use: a venv in .venv, torch==2.13.0 first (the CPU wheel on local
# disk; an unpinned torch pulls a multi-GB CUDA build), then the package with its extras,
# the example plugin, and the optional emoji artists (Debian Noto, npm Fluent). The exact
# versions are the recipe's (constraints.txt); pyproject.toml only gives ranges.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-v1

.PHONY: demo test setup slow bench bench-peers lint

demo: $(STAMP)
	$(VENV)/bin/reimagen demo

test: $(STAMP)
	$(PY) -m pytest

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt examples/reimagen_example_plugin/pyproject.toml scripts/install_artists.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch  # torch==2.13.0, before what needs it
	$(PY) -m pip install -q -c constraints.txt -e ".[jax,dev]"
	$(PY) -m pip install -q -c constraints.txt -e examples/reimagen_example_plugin
	bash scripts/install_artists.sh
	touch $@

slow: $(STAMP)
	REIMAGEN_SLOW=1 $(PY) -m pytest

bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-only -p no:randomly

# diffusers and imagen-pytorch beside us, in their own venv (.cache/peers/venv, or
# REIMAGEN_PEERS_VENV; without it, one line says how to make it): docs/results/peers.{md,json}.
# No .venv needed: the script re-runs itself in the peers' venv.
bench-peers:
	$(PYTHON) benchmarks/peers/run_peers.py

# What CI runs before the tests (CONTRIBUTING.md): lint, format check, type check of reimagen/.
LINTED := reimagen tests benchmarks scripts examples
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy
