# Quick start: `make repro` runs the pipeline on the embedded default, `make test` runs the tests.
# Both create .venv/ from the pinned lock file first if it is missing or out of date.
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Stage commands call `python`: put the venv first so dvc runs them with the pinned packages.
export PATH := $(BIN):$(PATH)
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1

.PHONY: setup repro test test-slow test-all plots compare report lock clean-venv

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

# The slow tier: end-to-end DVC runs (repro, caching, a teammate's clone). CI runs it after `make test`.
test-slow: $(STAMP)
	python -m pytest -m slow

test-all: $(STAMP)
	python -m pytest -m ""

# The plots dvc.yaml defines, as PNG files and plots/index.html, drawn offline (DVC's own HTML needs a CDN).
plots: $(STAMP)
	python -m rlhf.plots --out plots

# Every alignment method x SEEDS align seeds (align.seed 0..SEEDS-1; SFT, the reward model, reference and sft_answers
# come from the cache) as DVC experiments named <method>-seed<k>, then the table (mean +- sd over seeds, intervals)
# and plots/ with one labelled point per method (seed 0) on the reward-against-KL frontier. Queued experiments start
# from the workspace's params.yaml: run it on the committed baseline params (README, "Comparing methods"). Seed by
# seed, so that a stopped run has compared every method.
METHODS := dpo orpo ppo simpo kto grpo
SEEDS := 3
compare: $(STAMP)
	for s in $$(seq 0 $$(($(SEEDS) - 1))); do for m in $(METHODS); do \
	  dvc exp run --queue --name $$m-seed$$s -S method=$$m -S align.seed=$$s -S export.enabled=false; done; done
	dvc exp run --run-all --jobs 1
	python -m rlhf.report
	python -m rlhf.plots --out plots $(addsuffix -seed0,$(METHODS))

# docs/results.md and its committed input metrics/experiments.json, from make compare's experiments and the machine
report: $(STAMP)
	python -m rlhf.report --write

# Re-resolve the whole dependency set from requirements.in into requirements.lock.
lock:
	rm -rf /tmp/rlhf-lock && python3 -m venv /tmp/rlhf-lock
	/tmp/rlhf-lock/bin/python -m pip install --quiet -r requirements.in
	( echo "# Full resolved dependency set (pip freeze of a fresh .venv). Regenerate with: make lock"; \
	  echo "torch==2.13.0"; /tmp/rlhf-lock/bin/python -m pip freeze | grep -v '^torch==' ) > requirements.lock

clean-venv:
	rm -rf $(VENV)
