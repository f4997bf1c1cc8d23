# The two quick-start commands (see README): `make run` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup run test test-slow lint
setup:
	bash scripts/setup.sh

run: setup
	$(VENV)/bin/eopd-ray toy --out runs/toy

test: setup
	$(PY) -m pytest -m "not slow and not gpu and not cluster"

test-slow: setup
	$(PY) -m pytest -m "slow and not gpu and not cluster"

lint: setup
	$(VENV)/bin/ruff check eopd_ray tests benchmarks
	$(VENV)/bin/ruff format --check eopd_ray tests benchmarks
