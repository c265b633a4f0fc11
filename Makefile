# The two README commands: `make demo` (main job) and `make test` (test suite).
# Both create or refresh the project-local virtual environment .venv first.
PY ?= python3
VENV := .venv
DATA ?= ../shared/data/brain-tumor-mri
OUT ?= demo
RECIPE ?= quick

.PHONY: venv demo test lint clean-demo browser

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# clean -> train -> evaluate on the shared benchmark (short recipe; measured time: docs/RESULTS.md §7)
demo: venv
	$(VENV)/bin/brainmri clean --data $(DATA) --out $(OUT)/cleaned --policy drop-from-train
	$(VENV)/bin/brainmri train --data $(OUT)/cleaned --config $(RECIPE) --out $(OUT)/run
	$(VENV)/bin/brainmri evaluate --model $(OUT)/run/models/best.safetensors --data $(OUT)/cleaned --out $(OUT)/run/results

# Debian's chromium + chromium-driver for the page test (tests/test_page.py): installed only
# when missing and when run as root; otherwise that test skips and says why.
browser:
	@if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium and chromium-driver (apt-get)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	fi

test: venv browser
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/python -m pytest -q

clean-demo:
	rm -rf $(OUT)
