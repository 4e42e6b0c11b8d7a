# `make setup` is idempotent: it re-installs only when pyproject.toml or this Makefile changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
# torch is pinned first: on this kind of machine 2.13.0 is a local CPU wheel; elsewhere pip takes the
# normal (CUDA) wheel of the same version. pyproject keeps a range, which 2.13.0 satisfies.
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= dev,fiftyone,onnx

CHROMIUM := /usr/bin/chromium

.PHONY: setup browser test test-fast lint run clean

setup: $(STAMP) browser

# The browser tests drive Debian's Chromium (Playwright cannot download its own browser here).
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: the browser tests need Chromium at $(CHROMIUM) (apt-get install chromium); they are skipped"; fi; }

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PY) -m pip check
	touch $(STAMP)

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

run: setup
	$(PY) launch.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
