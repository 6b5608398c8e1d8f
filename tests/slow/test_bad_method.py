"""A misspelled `method` gets our message, not DVC's missing file (slow tier: runs dvc repro)."""
from pathlib import Path
from tests.conftest import REPO
from tests.repo.test_repo import DVC, _paths


def test_a_bad_method_gets_our_message_not_a_missing_file(tmp_path):
    """method: ORPO must be reported by rlhf/config.py (naming `method` and the allowed values) before DVC looks for
    rlhf/methods/ORPO.py, and before any data stage runs."""
    import shutil
    import subprocess

    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".venv", ".git", ".dvc", "data", "models", "metrics",
                                                              "dvclive", "checkpoints", "plots", "dvc.lock"))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=repo, check=True)
    # Every stage before align up to date (placeholder outputs, committed), as after a full run: DVC's own check of
    # align's deps would then come first.
    upstream = [s for s in DVC if s not in ("align", "evaluate", "export")]
    for name in upstream:
        for out in _paths(DVC[name], ("outs", "metrics", "plots")):
            path = repo / out
            if name == "check":
                continue
            if Path(out).suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}")
            else:
                path.mkdir(parents=True, exist_ok=True)
                (path / "placeholder").write_text("x")
    if "check" in DVC:
        subprocess.run(["dvc", "repro", "-q", "check"], cwd=repo, check=True)
    subprocess.run(["dvc", "commit", "-q", "-f", *upstream], cwd=repo, check=True)
    (repo / "params.yaml").write_text((REPO / "params.yaml").read_text().replace("method: dpo ", "method: ORPO ", 1))
    result = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True)
    assert result.returncode != 0
    assert "method" in result.stderr and "dpo" in result.stderr and "ORPO.py" not in result.stderr, result.stderr
