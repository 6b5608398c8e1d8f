"""The degeneration checks catch a policy trained into collapse (slow tier: a second align and evaluate)."""
import json

from rlhf import config
from tests.conftest import evaluate_stages
from tests.stages.test_align import run_align
from tests.stages.test_evaluate import evaluated  # noqa: F401 (a fixture)


def test_a_policy_trained_into_collapse_fails_the_degeneration_gate(evaluated, tiny_trained, tmp_path_factory):
    """DPO at a learning rate 1000 times the tiny default collapses the policy onto a few tokens (measured: distinct-2
    0.96 -> 0.26). eval.gate's min_distinct2_ratio (against SFT's distinct-2) catches it, and the default-trained policy (`evaluated`) passes. The
    within-answer repetition measure does not: the collapsed policy samples its ~20 tokens at random, so 4-grams
    rarely repeat inside one 32-token answer (repetition 0.011), which is why the gate also checks distinct-2."""
    gate = config.load(evaluated / "params.yaml").eval.gate
    default = json.loads((evaluated / "metrics/eval.json").read_text())
    work = run_align(tiny_trained, tmp_path_factory.mktemp("collapse"), "dpo",
                     **{"eval.num_prompts": 12, "eval.num_samples": 3, "dpo.learning_rate": 0.5, "dpo.max_steps": 10})
    evaluate_stages(work)
    collapsed = json.loads((work / "metrics/eval.json").read_text())
    keys = ("distinct2_sft", "distinct2_policy", "repetition_policy", "gate_distinct2_ratio", "gate_passed")
    summary = {k: (default.get(k), collapsed.get(k)) for k in keys}
    assert default["distinct2_policy"] / default["distinct2_sft"] >= gate.min_distinct2_ratio, summary
    assert default["gate_distinct2_ratio"], summary
    assert collapsed["distinct2_policy"] / collapsed["distinct2_sft"] < gate.min_distinct2_ratio, summary
    assert collapsed["gate_distinct2_ratio"] is False and collapsed["gate_passed"] is False, summary
