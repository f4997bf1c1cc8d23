# The two quick-start commands (see README): `make run` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup run toy test test-slow lint bench eval eval-bench bench-peers
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
	$(PY) -m pytest -m "slow and not gpu and not cluster" --durations=40

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

# eopd-ray against Hugging Face TRL's on-policy distillation on the tiny pair (benchmarks/peers.py);
# installs the bench extra (TRL 1.16.0) into the venv first when it is missing.
bench-peers: setup
	$(PY) -c "import trl" 2>/dev/null || $(VENV)/bin/pip install -e '.[bench]'
	$(VENV)/bin/eopd-ray tiny-models --out runs/tiny-models
	$(PY) benchmarks/peers.py --pair tiny --with-start
