# Every target installs what it needs first, so each works on a fresh clone.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint format teacher distill classify shapes-distill segment landmarks benchmark clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

# The small digits teacher: trained once, then reused by `make distill`.
artifacts/digits-teacher/unet/config.json: configs/teacher.yaml | $(STAMP)
	$(VENV)/bin/repfusion fit --config configs/teacher.yaml

teacher: artifacts/digits-teacher/unet/config.json

# The project's main job: distil the digits teacher into a ResNet-18 with the timestep policy.
distill: artifacts/digits-teacher/unet/config.json
	$(VENV)/bin/repfusion fit --config configs/distill.yaml

# Downstream demos on the embedded data, each from its distillation checkpoint.
artifacts/digits-distill/last.ckpt: artifacts/digits-teacher/unet/config.json configs/distill.yaml
	$(VENV)/bin/repfusion fit --config configs/distill.yaml

classify: artifacts/digits-distill/last.ckpt
	$(VENV)/bin/repfusion fit --config configs/classify.yaml

artifacts/shapes-teacher/unet/config.json: configs/shapes-teacher.yaml | $(STAMP)
	$(VENV)/bin/repfusion fit --config configs/shapes-teacher.yaml

artifacts/shapes-distill/last.ckpt: artifacts/shapes-teacher/unet/config.json configs/shapes-distill.yaml
	$(VENV)/bin/repfusion fit --config configs/shapes-distill.yaml

shapes-distill: artifacts/shapes-distill/last.ckpt

segment: artifacts/shapes-distill/last.ckpt
	$(VENV)/bin/repfusion fit --config configs/segment.yaml

landmarks: artifacts/shapes-distill/last.ckpt
	$(VENV)/bin/repfusion fit --config configs/landmarks.yaml

benchmark: $(STAMP)
	$(PY) benchmarks/speed.py

clean:
	rm -rf artifacts lightning_logs
