# Quick start: `make repro` runs the pipeline on the embedded default, `make test` runs the tests.
# Both create .venv/ from the pinned lock file first if it is missing or out of date.
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Stage commands call `python`: put the venv first so dvc runs them with the pinned packages.
export PATH := $(BIN):$(PATH)
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1

.PHONY: setup repro exp show release preset docs test test-slow test-all plots compare study report lock clean-venv

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Into a log (stderr not a terminal), progress bars redraw every 30 s instead of 10 times a second: tqdm reads
# TQDM_MININTERVAL (tqdm >= 4.66), and the datasets and transformers bars are tqdm's.
# Afterwards, rlhf.paths deletes what a killed run left beside the outputs (a stage sweeps only the folder it writes,
# and a repro that DVC serves wholly from its run cache runs no stage).
repro: $(STAMP)
	if [ -t 2 ]; then dvc repro; else TQDM_MININTERVAL=30 dvc repro; fi
	python -m rlhf.paths

# Every experiment starts from the committed params.yaml: `dvc exp run` leaves an experiment's params in the
# workspace, so a second `dvc exp run -S ...` would silently stack on the first. BASELINE puts the committed file
# back, printing what it discards (commit a change to make it the new baseline).
BASELINE := git diff --quiet HEAD -- params.yaml || { echo "params.yaml: restoring the committed baseline, discarding:"; \
	git --no-pager diff HEAD -- params.yaml; git checkout HEAD -- params.yaml; }

# One experiment from the baseline: make exp ARGS="-S method=orpo" (ARGS: any `dvc exp run` options).
exp: $(STAMP)
	@$(BASELINE)
	dvc exp run $(ARGS)
	python -m rlhf.paths

# The experiments table for a laptop screen: the params that differ between rows, `method`, and the headline metrics.
# Plain `dvc exp show` lists every key of params.yaml (about 200): DVC shows the default params file whole.
show: $(STAMP)
	dvc exp show --no-pager --only-changed --keep '^(Experiment|Created|State|method)$$|^($(HEADLINE))' $(ARGS)

# For release pipelines and CI: the run fails if the policy fails eval.gate (`make repro` writes only a model card
# then, and succeeds). An experiment, since `dvc repro` takes no param overrides; like any `dvc exp run`, it leaves
# export.on_failed_gate: fail in the workspace's params.yaml, which a release branch may commit.
release: $(STAMP)
	dvc exp run -S export.on_failed_gate=fail

# Write a preset's values (configs/$(PRESET).yaml) into params.yaml, printing each change: make preset PRESET=real-model.
# Commit params.yaml to make it the baseline that `make exp` restores.
PRESET := real-model
preset: $(STAMP)
	python -m rlhf.preset configs/$(PRESET).yaml

# The generated docs: the params reference, docs/params.md, from params.yaml's comments, and the benchmark figures in
# bench/README.md and README.md from metrics/bench.json (tests/unit/test_docs.py and tests/repo/test_docs.py check them).
docs: $(STAMP)
	python -m rlhf.docs --write
	python -m bench.report --write

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
# from the committed baseline params (BASELINE restores them first, as `make exp`). Seed by seed, so that a stopped
# run has compared every method; an experiment that already exists (same name, same baseline commit) is not rerun.
METHODS := $(shell $(BIN)/python -c "from rlhf.config import METHODS; print(*METHODS)" 2>/dev/null)
HEADLINE := oracle_mean|oracle_win_rate|rm_win_rate|kl_policy_sft|length_policy|implicit_accuracy
SEEDS := 3
compare: STUDY := methods
compare: study
	python -m rlhf.plots --out plots $(addsuffix -seed0,$(METHODS))

# One study of rlhf/report.py's STUDIES x SEEDS align seeds: make study STUDY=ensemble (GRPO with one reward model
# against an ensemble of 4 and the conservative reward), STUDY=online (on-policy DPO rounds against offline DPO),
# STUDY=ppo (PPO's options one at a time) or STUDY=dpo_beta (a sweep of DPO's beta).
# Its table joins docs/results.md at the next `make report`.
study: $(STAMP)
	@$(BASELINE)
	python -m rlhf.report --plan $(STUDY) --seeds $(SEEDS) | while read -r name settings; do \
	  dvc exp run --queue --name $$name $$settings; done
	dvc exp run --run-all --jobs 1
	python -m rlhf.paths
	python -m rlhf.report

# docs/results.md and its committed input metrics/experiments.json, from make compare's experiments and the machine.
# REVS: the commits the experiments were run from, when not HEAD (make report REVS="4c0e853 320d885"; a name run
# from two of them is taken from the later).
REVS :=
report: $(STAMP)
	python -m rlhf.report --write $(addprefix --rev ,$(REVS))

# Re-resolve the whole dependency set from requirements.in into requirements.lock.
lock:
	rm -rf /tmp/rlhf-lock && python3 -m venv /tmp/rlhf-lock
	/tmp/rlhf-lock/bin/python -m pip install --quiet -r requirements.in
	( echo "# Full resolved dependency set (pip freeze of a fresh .venv). Regenerate with: make lock"; \
	  echo "torch==2.13.0"; /tmp/rlhf-lock/bin/python -m pip freeze | grep -v '^torch==' ) > requirements.lock

clean-venv:
	rm -rf $(VENV)
