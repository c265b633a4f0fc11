# The two README commands: `make demo` (main job) and `make test` (test suite).
# Both create or refresh the project-local virtual environment .venv first.
PY ?= python3
VENV := .venv
DATA ?= ../shared/data/brain-tumor-mri
OUT ?= demo
RECIPE ?= quick

.PHONY: venv demo test lint clean-demo

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# clean -> train -> evaluate on the shared benchmark (short recipe; ~15-20 min on 2 cores)
demo: venv
	$(VENV)/bin/brainmri clean --data $(DATA) --out $(OUT)/cleaned --policy drop-from-train
	$(VENV)/bin/brainmri train --data $(OUT)/cleaned --config $(RECIPE) --out $(OUT)/run
	$(VENV)/bin/brainmri evaluate --model $(OUT)/run/models/best.safetensors --data $(OUT)/cleaned --out $(OUT)/run/results

test: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/python -m pytest -q

clean-demo:
	rm -rf $(OUT)
