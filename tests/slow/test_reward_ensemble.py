"""End to end through DVC: `dvc exp run -S reward.ensemble.members=2` after a full `dvc repro` reruns the reward stage
onward, and the experiment's metrics carry both members and the ensemble's disagreement."""
import json

from tests.conftest import TINY
from tests.slow.test_pipeline import ran, scratch_repo, sh


def test_an_ensemble_of_two_through_dvc(tmp_path):
    repo = scratch_repo(tmp_path, {**TINY, "method": "dpo", "eval.num_prompts": 16})
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro")
    single = json.loads((repo / "metrics/eval.json").read_text())
    assert single["rm_std_sft"] == single["rm_uncertainty_rise"] == 0
    exp = sh(repo, "dvc", "exp", "run", "-S", "reward.ensemble.members=2")
    assert ran(exp)[-5:] == ["reward", "sft_answers", "align", "evaluate", "export"], exp.stdout + exp.stderr
    assert "sft" not in ran(exp) and "reference" not in ran(exp)
    reward = json.loads((repo / "metrics/reward.json").read_text())
    assert {"member_0_accuracy", "member_1_accuracy", "ensemble_accuracy"} <= set(reward)
    assert json.loads((repo / "models/reward/ensemble.json").read_text())["members"] == ["member-0", "member-1"]
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert evaluation["rm_std_sft"] > 0 and evaluation["rm_std_policy"] > 0
    assert evaluation["rm_ensemble_accuracy"] == reward["ensemble_accuracy"]
    # DPO never reads the reward model, so its policy is the single run's: the same answers, now judged by two members
    assert evaluation["kl_policy_sft"] == single["kl_policy_sft"]
