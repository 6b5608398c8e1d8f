"""A teammate reproduces a run: push to a DVC remote, clone, pull, and find everything up to date with identical
metrics; a forced rerun from scratch gives the same metrics; experiments travel with `dvc exp push` / `pull`."""
import json

import pytest

from conftest import TINY, write_params
from test_pipeline import COPY, REPO, ran, sh

pytestmark = pytest.mark.slow  # `make test-slow`; CI runs it

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def metrics(repo, skip=("train_seconds",)) -> dict:
    """Every metrics file of a checkout, without wall times (the one value that differs between identical runs)."""
    out = {}
    for path in sorted((repo / "metrics").glob("*.json")):
        data = json.loads(path.read_text())
        out[path.name] = {k: v for k, v in data.items() if k not in skip}
    return out


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A teammate's repo: the pipeline run on tiny settings, committed, and pushed to a local DVC remote."""
    import shutil

    root = tmp_path_factory.mktemp("teammate")
    work = root / "origin"
    for name in COPY:
        src, dst = REPO / name, work / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, dst)
    write_params(work / "params.yaml", TINY)
    sh(work, "git", "init", "-q", "-b", "main")
    sh(work, "dvc", "remote", "add", "-d", "store", str(root / "dvc-remote"))
    sh(work, "git", "add", "-A")
    sh(work, *GIT, "commit", "-qm", "pipeline")
    sh(work, "dvc", "repro")
    sh(work, "dvc", "push")
    sh(work, "git", "add", "-A")
    sh(work, *GIT, "commit", "-qm", "run")
    return work


def test_clone_pull_is_up_to_date_with_identical_metrics(origin, tmp_path):
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    sh(clone, "dvc", "pull")
    assert (clone / "models/policy/adapter_model.safetensors").exists()
    assert "up to date" in sh(clone, "dvc", "status").stdout
    assert ran(sh(clone, "dvc", "repro")) == []
    assert metrics(clone) == metrics(origin)


def test_rerun_from_scratch_gives_identical_metrics(origin, tmp_path):
    clone = tmp_path / "scratch"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    forced = sh(clone, "dvc", "repro", "--force")  # no pull: every stage runs again here
    assert ran(forced)[0] == "fetch" and ran(forced)[-1] == "evaluate"
    assert metrics(clone) == metrics(origin)


def test_experiment_travels_with_exp_push_and_pull(origin, tmp_path):
    mine = tmp_path / "mine"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(mine))
    sh(mine, "dvc", "pull")
    run = sh(mine, "dvc", "exp", "run", "-n", "try-orpo", "-S", "method=orpo")
    assert ran(run) == ["align", "evaluate"]
    diff = json.loads(sh(mine, "dvc", "metrics", "diff", "HEAD", "try-orpo", "--json", "--all").stdout)
    assert "oracle_mean_policy" in diff["metrics/eval.json"] and "method" not in diff["metrics/eval.json"]
    assert diff["metrics/eval.json"]["kl_policy_sft"]["new"] != diff["metrics/eval.json"]["kl_policy_sft"]["old"]
    sh(mine, "dvc", "exp", "push", "origin", "try-orpo")

    theirs = tmp_path / "theirs"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(theirs))
    sh(theirs, "dvc", "exp", "pull", "origin", "try-orpo")
    sh(theirs, "dvc", "exp", "apply", "try-orpo")
    sh(theirs, "dvc", "pull")
    assert "up to date" in sh(theirs, "dvc", "status").stdout
    exp_metrics = json.loads((theirs / "metrics/align.json").read_text())
    assert exp_metrics["method"] == "orpo"
    assert metrics(theirs) == metrics(mine)
