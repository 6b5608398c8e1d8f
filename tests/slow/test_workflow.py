"""The DVC workflow as users live it (issue 23), in a scratch git + DVC copy of the project on tiny settings:
every stage comes back from the run cache, experiments start from the committed baseline, `make show` is readable."""
import json
import shutil

import pytest
import yaml

from tests.conftest import TINY, write_params
from tests.slow.test_pipeline import COPY, REPO, ran, sh


GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
STAGES = ["check", "fetch", "prepare", "base", "tokenize", "sft", "reward", "reference", "sft_answers", "align",
          "evaluate", "export"]
MAKE = ["make", "STAMP="]  # the Makefile's targets without its venv step: the tests run in the pinned venv already


def make_copy(root):
    """A git repo holding the project's pipeline on TINY params, committed, before any run."""
    for name in COPY + ["Makefile"]:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, dst)
    write_params(root / "params.yaml", TINY)
    sh(root, "git", "init", "-q", "-b", "main")
    sh(root, "git", "add", "-A")
    sh(root, *GIT, "commit", "-qm", "pipeline")
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The default run, committed as the baseline. Tests run in order and each leaves the baseline in params.yaml."""
    root = make_copy(tmp_path_factory.mktemp("workflow") / "repo")
    assert ran(sh(root, "dvc", "repro")) == STAGES
    sh(root, "git", "add", "-A")
    sh(root, *GIT, "commit", "-qm", "run")
    return root


def test_show_is_readable_and_names_the_method(repo):
    """`make show` on the default run: a table for a laptop screen, with the method (a param, not also a metric)."""
    table = sh(repo, *MAKE, "-s", "show", "ARGS=--csv").stdout.splitlines()
    header = table[0].split(",")
    assert len(header) <= 60, header
    assert "method" in header and header.count("method") == 1
    assert "oracle_win_rate" in header and "kl_policy_sft" in header
    declared = yaml.safe_load((repo / "dvc.yaml").read_text())
    assert [s for s, d in declared["stages"].items() if "metrics" in d] == ["evaluate"]  # headline numbers only


def test_experiments_start_from_the_baseline(repo):
    """`make exp` twice: the second experiment runs on the committed params, not on the first one's `method`."""
    sh(repo, *MAKE, "exp", "ARGS=-n orpo -S method=orpo -S export.enabled=false")
    assert yaml.safe_load((repo / "params.yaml").read_text())["method"] == "orpo"  # what DVC leaves behind
    second = sh(repo, *MAKE, "exp", "ARGS=-n beta -S dpo.beta=0.2 -S export.enabled=false")
    assert "restoring the committed baseline" in second.stdout
    params = json.loads(sh(repo, "dvc", "exp", "show", "--json", "--no-pager").stdout)
    runs = {exp["name"]: exp for row in params for group in (row.get("experiments") or []) for exp in group["revs"]}
    beta = runs["beta"]["data"]["params"]["params.yaml"]["data"]
    assert beta["method"] == "dpo" and beta["dpo"]["beta"] == 0.2


def test_every_stage_comes_back_from_the_run_cache(repo):
    """Issue 23's four steps: the default ran, then `dpo.beta=0.2` (the test above); back at the default, `dvc repro`
    restores align, evaluate and export from the run cache. Without dvc.lock, every one of the 12 stages does."""
    sh(repo, "git", "checkout", "HEAD", "--", "params.yaml")
    back = sh(repo, "dvc", "repro")
    assert ran(back) == []
    for name in ("align", "evaluate", "export"):
        assert f"Stage '{name}' is cached - skipping run" in back.stdout
    (repo / "dvc.lock").unlink()
    again = sh(repo, "dvc", "repro")
    assert ran(again) == []
    assert [s for s in STAGES if f"Stage '{s}' is cached - skipping run" not in again.stdout] == []
    sh(repo, "git", "checkout", "HEAD", "--", "dvc.lock")
