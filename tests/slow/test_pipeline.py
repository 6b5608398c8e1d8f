"""End to end: `dvc repro` of the data stages in a temporary copy of the repo, and DVC's caching behaviour."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY, write_params


COPY = ["dvc.yaml", "paths.yaml", "params.yaml", "stages", "rlhf", "rewards", ".dvc/config", ".dvc/plots", ".dvcignore"]
# Tests run in order on one repo copy; each leaves params as the next expects.


def sh(cwd, *args, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def ran(proc) -> list[str]:
    return [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")]


def set_params(repo: Path, **dotted):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in dotted.items():
        *parents, last = key.split("__")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def scratch_repo(root: Path, overrides: dict) -> Path:
    """A git + DVC copy of the project in `root`, on the repo's params with `overrides`, committed."""
    for name in COPY:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    write_params(root / "params.yaml", overrides)
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC copy of the project with small data and a short pretraining, after one full `dvc repro`."""
    root = scratch_repo(tmp_path_factory.mktemp("pipeline"), TINY)
    first = sh(root, "dvc", "repro")
    assert ran(first) == ["check", "fetch", "prepare", "base", "tokenize", "sft", "reward", "reference", "sft_answers",
                          "align", "evaluate", "export"]
    return root


def test_outputs_and_metrics(repo):
    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["rows_read"] == 200 and data["train_rows"] + data["validation_rows"] == data["rows_fetched"] - sum(
        v for k, v in data.items() if k.startswith("dropped_") and k != "dropped_tie")
    tok = json.loads((repo / "metrics/tokenize.json").read_text())
    assert tok["train"]["rows_out"] == data["train_rows"]
    from datasets import load_from_disk

    splits = load_from_disk(str(repo / "data/tokenized"))
    assert set(splits) == {"train", "validation"}
    assert splits["train"].column_names == ["id", "prompt_ids", "chosen_ids", "rejected_ids"]
    lengths = [len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in splits["validation"]]
    assert lengths == sorted(lengths, reverse=True)
    assert (repo / "models/base/model.safetensors").exists() and (repo / "models/base/base.json").exists()
    assert not list(repo.rglob("*.tmp-*"))


def test_second_repro_runs_nothing(repo):
    again = sh(repo, "dvc", "repro")
    assert ran(again) == []
    assert "up to date" in sh(repo, "dvc", "status").stdout


def test_tokenize_param_reruns_only_tokenize(repo):
    set_params(repo, tokenize__max_prompt_length=192)  # above every prompt's length: no row changes
    assert ran(sh(repo, "dvc", "repro")) == ["tokenize"]


def test_reward_param_reruns_only_reward(repo):
    set_params(repo, reward__learning_rate=1.0e-3)
    assert ran(sh(repo, "dvc", "repro")) == ["reward", "sft_answers", "align", "evaluate", "export"]


def test_lora_param_reruns_sft_and_reward(repo):
    set_params(repo, lora__lora_dropout=0.1)
    assert ran(sh(repo, "dvc", "repro")) == ["sft", "reward", "reference", "sft_answers", "align", "evaluate", "export"]


def test_method_switch_reruns_only_align(repo):
    """reference and sft_answers (the SFT side of DPO and of evaluate) come from the cache."""
    set_params(repo, method="orpo")  # check validates the new value (a second) and leaves fetch alone
    assert ran(sh(repo, "dvc", "repro")) == ["check", "align", "evaluate", "export"]
    assert json.loads((repo / "metrics/align.json").read_text())["method"] == "orpo"


def test_unused_method_params_rerun_nothing(repo):
    set_params(repo, kto__beta=0.3, dpo__beta=0.2)  # method is orpo now
    assert ran(sh(repo, "dvc", "repro")) == []
    set_params(repo, orpo__beta=0.2)
    assert ran(sh(repo, "dvc", "repro")) == ["align", "evaluate", "export"]


def test_tracking_switch_reruns_nothing(repo):
    set_params(repo, tracking__wandb=True)
    assert ran(sh(repo, "dvc", "repro")) == []
    set_params(repo, tracking__wandb=False)


def test_export_param_reruns_only_export(repo):
    set_params(repo, export__dtype="bfloat16")
    assert ran(sh(repo, "dvc", "repro")) == ["export"]
    assert json.loads((repo / "models/export/config.json").read_text())["dtype"] == "bfloat16"
    set_params(repo, export__dtype="auto")
    sh(repo, "dvc", "repro")


def test_killed_training_stage_resumes_on_the_next_repro(repo):
    """SIGKILL `dvc repro` and its sft stage once a checkpoint is complete: `dvc checkout` brings back the committed
    outputs, and the next `dvc repro` resumes from that checkpoint instead of starting over."""
    import signal
    import time

    committed = (repo / "models/sft/adapter_model.safetensors").read_bytes()
    set_params(repo, sft__max_steps=150, sft__save_steps=5, sft__eval_steps=50)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while not list((repo / "checkpoints/sft").glob("checkpoint-*/complete.json")):
        assert proc.poll() is None and time.time() < deadline, "the stage ended before any checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # the outputs dvc.lock names come back from the cache; --force, because the killed run's DVCLive curves (a cached
    # output, written as it trains) are files DVC has not saved and will not discard without it
    sh(repo, "dvc", "checkout", "--force")
    assert (repo / "models/sft/adapter_model.safetensors").read_bytes() == committed
    rerun = sh(repo, "dvc", "repro")
    assert "checkpoints: resuming from" in rerun.stdout
    assert ran(rerun) == ["sft", "reward", "reference", "sft_answers", "align", "evaluate", "export"]
    assert json.loads((repo / "metrics/sft.json").read_text())["steps"] == 150
    assert not (repo / "checkpoints/sft").exists()
    assert not list(repo.rglob(".sft.tmp-*"))  # the killed run's temporary output was cleared by the rerun


def test_bad_param_fails_cleanly_and_cache_restores(repo):
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("sample_ratio:", "sampel_ratio:"))
    failed = sh(repo, "dvc", "repro", check=False)
    assert failed.returncode != 0
    assert "unknown key 'data.sampel_ratio'. Did you mean 'data.sample_ratio'?" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (repo / "data/fetched").exists()  # nothing half-written that a later stage could use
    (repo / "params.yaml").write_text(params)
    sh(repo, "dvc", "checkout")  # the last good outputs come back from the cache
    assert (repo / "data/fetched/rows.jsonl").exists()
    assert ran(sh(repo, "dvc", "repro")) == []


def test_the_card_command_succeeds_when_the_method_fails_the_gate(tmp_path):
    """`dvc exp run -S method=orpo`, exactly as users type it, on params.yaml's export.on_failed_gate (TINY's
    override dropped): a tiny ORPO policy fails eval.gate, and still the command exits 0, models/export holds only the
    card, and the experiment shows in `dvc exp show` with gate_passed false and the failed checks as false."""
    overrides = {k: v for k, v in TINY.items() if k != "export.on_failed_gate"}
    root = scratch_repo(tmp_path, overrides)
    run = sh(root, "dvc", "exp", "run", "-S", "method=orpo")  # raises on a non-zero exit
    assert ran(run)[-3:] == ["align", "evaluate", "export"]
    assert [p.name for p in (root / "models/export").iterdir()] == ["README.md"]
    assert "# Not exported: the orpo policy failed eval.gate" in (root / "models/export/README.md").read_text()
    shown = json.loads(sh(root, "dvc", "exp", "show", "--json").stdout)
    exps = [rev["data"] for baseline in shown for exp in baseline.get("experiments") or [] for rev in exp["revs"]]
    assert len(exps) == 1 and exps[0]["params"]["params.yaml"]["data"]["method"] == "orpo"
    metrics = exps[0]["metrics"]["metrics/eval.json"]["data"]
    assert metrics["gate_passed"] is False and any(v is False for k, v in metrics.items() if k != "gate_passed"
                                                   and k.startswith("gate_"))
