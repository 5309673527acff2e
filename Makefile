# Every target installs what it needs first, so each works on a fresh clone.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: install test test-all lint format teacher distill classify distill-digits classify-digits shapes-distill segment landmarks demo \
	fashion-mnist fashion-teacher quality benchmark docs clean

# pyproject.toml says which versions the code supports; constraints.txt pins what this venv and CI test.
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The manual's tools (the docs extra) get their own stamp: `make test` does not need them.
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,docs]'
	touch $(DOCS_STAMP)

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

# The manual (docs/ + the docstrings of src/) into site/; every warning is an error.
docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict

# The small digits teacher: trained once, then reused by `make distill`.
artifacts/digits-teacher/unet/config.json: configs/teacher.yaml | $(STAMP)
	$(VENV)/bin/repfusion fit --config configs/teacher.yaml

teacher: artifacts/digits-teacher/unet/config.json

# The project's main job (about 10 minutes on 2 CPU cores): distil the shipped Fashion-MNIST teacher
# (benchmarks/teachers/fashion-32) into a ResNet-18 on the Fashion-MNIST subset the package ships, with the
# dense loss and the timestep policy; the monitor's last line says student, random bar and teacher.
distill: $(STAMP)
	$(VENV)/bin/repfusion fit --config configs/fashion-distill.yaml

artifacts/fashion-distill/last.ckpt: configs/fashion-distill.yaml | $(STAMP)
	$(VENV)/bin/repfusion fit --config configs/fashion-distill.yaml

# Fine-tune the main job's student with 100 labels per class (configs/fashion-classify.yaml).
classify: artifacts/fashion-distill/last.ckpt
	$(VENV)/bin/repfusion fit --config configs/fashion-classify.yaml

# The digits: train one's own small teacher (make teacher), distil it, fine-tune with 10 labels per class.
distill-digits: artifacts/digits-teacher/unet/config.json
	$(VENV)/bin/repfusion fit --config configs/distill.yaml

artifacts/digits-distill/last.ckpt: artifacts/digits-teacher/unet/config.json configs/distill.yaml
	$(VENV)/bin/repfusion fit --config configs/distill.yaml

classify-digits: artifacts/digits-distill/last.ckpt
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

# The whole story on the digits (under 30 minutes on 2 CPU cores): probe, three distillations,
# fine-tuning from each and from random init over 3 seeds -> benchmarks/results/demo.{json,md,png}.
demo: artifacts/digits-teacher/unet/config.json
	$(PY) benchmarks/demo.py

# Fashion-MNIST from the Debian/Ubuntu package, when it is missing and apt-get can install it.
FASHION := /usr/share/datasets/fashion-mnist
fashion-mnist:
	@test -f $(FASHION)/train-images-idx3-ubyte.gz || apt-get install -y dataset-fashion-mnist || { \
		echo "Fashion-MNIST is not in $(FASHION): install the package dataset-fashion-mnist, or run"; \
		echo "benchmarks/quality.py --root DIR with the four IDX .gz files in DIR"; exit 1; }

artifacts/fashion-teacher/unet/config.json: configs/fashion-teacher.yaml | $(STAMP) fashion-mnist
	$(VENV)/bin/repfusion fit --config configs/fashion-teacher.yaml

fashion-teacher: artifacts/fashion-teacher/unet/config.json

# Does distillation beat random init on real data? Fashion-MNIST with the GPU-trained teacher shipped in
# benchmarks/teachers/fashion-32, CPU profile (benchmarks/quality.py's docstring says how it is sized).
quality: $(STAMP) fashion-mnist
	$(PY) benchmarks/quality.py --profile cpu

benchmark: $(STAMP)
	$(PY) benchmarks/speed.py

clean:
	rm -rf artifacts lightning_logs
