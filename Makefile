# Quick start: `make repro` runs the pipeline on the embedded default, `make test` runs the tests.
# Both create .venv/ from the pinned lock file first if it is missing or out of date.
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Stage commands call `python`: put the venv first so dvc runs them with the pinned packages.
export PATH := $(BIN):$(PATH)
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1

.PHONY: setup repro test test-all lock clean-venv

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

repro: $(STAMP)
	dvc repro

test: $(STAMP)
	python -m pytest

# Also the slow tier: end-to-end DVC runs through every stage.
test-all: $(STAMP)
	python -m pytest -m ""

# Re-resolve the whole dependency set from requirements.in into requirements.lock.
lock:
	rm -rf /tmp/rlhf-lock && python3 -m venv /tmp/rlhf-lock
	/tmp/rlhf-lock/bin/python -m pip install --quiet -r requirements.in
	( echo "# Full resolved dependency set (pip freeze of a fresh .venv). Regenerate with: make lock"; \
	  echo "torch==2.13.0"; /tmp/rlhf-lock/bin/python -m pip freeze | grep -v '^torch==' ) > requirements.lock

clean-venv:
	rm -rf $(VENV)
