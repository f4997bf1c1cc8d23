# The two quick-start commands (see README): `make run` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup run toy test test-slow lint bench eval eval-bench
setup:
	bash scripts/setup.sh

# Main job: build + pre-train the tiny teacher/student (cached), then distil on a local Ray.
run: setup
	$(VENV)/bin/eopd-ray tiny-models --out runs/tiny-models
	$(VENV)/bin/eopd-ray train configs/tiny.yaml

toy: setup
	$(VENV)/bin/eopd-ray toy --out runs/toy

test: setup
	$(PY) -m pytest -m "not slow and not gpu and not cluster"

test-slow: setup
	$(PY) -m pytest -m "slow and not gpu and not cluster"

lint: setup
	$(VENV)/bin/ruff check eopd_ray tests benchmarks
	$(VENV)/bin/ruff format --check eopd_ray tests benchmarks

bench: setup
	$(PY) benchmarks/pipeline.py

# Evaluate the tiny teacher and student (built by `make run`) on 64 held-out synthetic problems,
# with the teacher-referenced KLs and entropy histograms.
eval: setup
	$(VENV)/bin/eopd-ray tiny-models --out runs/tiny-models
	$(VENV)/bin/eopd-ray eval configs/eval-tiny.yaml

eval-bench: setup
	$(PY) benchmarks/eval.py
