"""online_dpo end to end through DVC: `dvc exp run -S method=online_dpo` as users type it, each round's pairs in the
align output, and a change to its params reruns align onwards only."""
import json

from tests.conftest import TINY
from tests.slow.test_pipeline import ran, scratch_repo, sh


def test_online_dpo_runs_from_dvc_exp_run_and_its_params_rerun_only_align_onwards(tmp_path):
    root = scratch_repo(tmp_path, TINY)
    first = sh(root, "dvc", "exp", "run", "-S", "method=online_dpo")
    assert ran(first)[-3:] == ["align", "evaluate", "export"]
    metrics = json.loads((root / "metrics/align.json").read_text())
    assert metrics["method"] == "online_dpo" and set(metrics["rounds"]) == {"1", "2"}
    for r in ("1", "2"):
        data = json.loads((root / f"models/policy/rounds/{r}/data.json").read_text())
        lines = (root / f"models/policy/rounds/{r}/pairs.jsonl").read_text().splitlines()
        assert data["pairs"] == len(lines) == metrics["rounds"][r]["pairs"] > 0
    assert "gate_passed" in json.loads((root / "metrics/eval.json").read_text())
    assert not (root / "checkpoints/align").exists()  # a finished run leaves no rounds behind to resume
    # the workspace keeps the experiment's params, so the next run starts from method online_dpo
    assert ran(sh(root, "dvc", "exp", "run", "-S", "online_dpo.min_margin=0.1")) == ["align", "evaluate", "export"]
    assert ran(sh(root, "dvc", "exp", "run", "-S", "dpo.beta=0.3")) == []
