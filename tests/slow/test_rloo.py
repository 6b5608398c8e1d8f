"""method rloo end to end through DVC on tiny settings: every stage runs, align trains with TRL's RLOOTrainer, and a
change to an rloo param, or to a user reward function in rewards/, reruns align onward only."""
from tests.conftest import TINY
from tests.slow.test_pipeline import ran, scratch_repo, set_params, sh


def test_rloo_runs_end_to_end_and_its_changes_rerun_align_onward(tmp_path):
    import json

    repo = scratch_repo(tmp_path, {**TINY, "method": "rloo"})
    assert ran(sh(repo, "dvc", "repro")) == ["check", "fetch", "prepare", "base", "tokenize", "sft", "reward",
                                              "reference", "sft_answers", "align", "evaluate", "export"]
    metrics = json.loads((repo / "metrics/align.json").read_text())
    assert metrics["method"] == "rloo" and metrics["steps"] == TINY["rloo.max_steps"]
    assert {"rewards_rm_reward_mean", "oracle_gain"} <= set(metrics)
    assert "gate_passed" in json.loads((repo / "metrics/eval.json").read_text())

    set_params(repo, rloo__beta=0.1)
    assert ran(sh(repo, "dvc", "repro")) == ["align", "evaluate", "export"]

    set_params(repo, rloo__rewards__functions={"rewards.example:polite": 0.5})
    assert ran(sh(repo, "dvc", "repro")) == ["align", "evaluate", "export"]
    assert "rewards_rewards_example_polite_mean" in json.loads((repo / "metrics/align.json").read_text())
    with open(repo / "rewards/example.py", "a") as module:  # a comment: align reruns, and trains the same policy
        module.write("\n# an edit to a user reward function\n")  # byte for byte, so evaluate and export stay cached
    assert ran(sh(repo, "dvc", "repro")) == ["align"]
