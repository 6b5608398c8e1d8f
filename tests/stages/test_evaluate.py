"""evaluate: metric functions on hand-made inputs, and the stage on the tiny models."""
import json
import math

import pytest
import torch

from rlhf import config, evaluate, sft_answers, tokenize
from rlhf.io import UserError
from tests.conftest import evaluate_stages
from tests.stages.test_align import run_align
from rlhf.paths import layout


def test_win_rate_counts_ties_apart():
    a = torch.tensor([1.0, 2.0, 3.0, 0.5, 2.0])
    b = torch.tensor([0.0, 2.0, 4.0, 0.5, 1.0])
    # wins: rows 0 and 4; ties: rows 1 and 3; losses: row 2
    assert evaluate.win_rate(a, b) == pytest.approx({"win_rate": 0.4, "tie_rate": 0.4, "loss_rate": 0.2})


def test_kl_estimate_on_two_known_distributions():
    """Samples from p = (0.7, 0.2, 0.1); reference q = (0.2, 0.3, 0.5).
    Exact KL(p || q) = 0.7 ln(0.7/0.2) + 0.2 ln(0.2/0.3) + 0.1 ln(0.1/0.5) = 0.7075."""
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.2, 0.3, 0.5])
    exact = (p * (p / q).log()).sum().item()
    assert exact == pytest.approx(0.7 * math.log(3.5) + 0.2 * math.log(2 / 3) + 0.1 * math.log(0.2))
    generator = torch.Generator().manual_seed(0)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=generator)
    estimate = evaluate.kl_estimate(p.log()[samples], q.log()[samples])
    assert estimate == pytest.approx(exact, abs=0.01)
    assert evaluate.kl_estimate(p.log()[samples], p.log()[samples]) == 0.0


def test_implicit_accuracy_hand_computed():
    # margins: (1-0)-(0-0)=1 > 0; (0-1)-(0-0)=-1; (2-1)-(3-2)=0 (a tie is not above)
    policy_chosen, ref_chosen = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 1.0])
    policy_rejected, ref_rejected = torch.tensor([0.0, 0.0, 3.0]), torch.tensor([0.0, 0.0, 2.0])
    assert evaluate.implicit_accuracy(policy_chosen, ref_chosen, policy_rejected, ref_rejected) == pytest.approx(1 / 3)


def test_histogram_keeps_every_value():
    rows = evaluate.histogram({"sft": [0.0, 0.5, 1.0, 1.0], "policy": [1.0, 1.5]}, bins=3)
    assert [r["reward"] for r in rows] == [0.25, 0.75, 1.25]
    assert [r["sft"] for r in rows] == [1, 1, 2] and [r["policy"] for r in rows] == [0, 0, 2]


@pytest.fixture(scope="module")
def evaluated(tiny_trained, tmp_path_factory):
    """A tiny DPO policy after the sft_answers and evaluate stages."""
    work = run_align(tiny_trained, tmp_path_factory.mktemp("evaluate"), "dpo",
                     **{"eval.num_prompts": 12, "eval.num_samples": 3})
    evaluate_stages(work)
    return work


def test_evaluate_stage(evaluated):
    work = evaluated
    metrics = json.loads((work / "metrics/eval.json").read_text())
    assert metrics["rm_win_rate"] + metrics["rm_tie_rate"] + metrics["rm_loss_rate"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["oracle_win_rate"] + metrics["oracle_tie_rate"] + metrics["oracle_loss_rate"] == pytest.approx(1.0, abs=1e-5)
    # numbers and booleans only (the gate's reasons go to the card and the log), so `dvc exp show` stays readable
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    checks = {k: v for k, v in metrics.items() if k.startswith("gate_") and k != "gate_passed"}
    assert "gate_kl_policy_sft" in checks and all(isinstance(v, bool) for v in checks.values())
    assert metrics["gate_passed"] is all(checks.values())
    assert metrics["chosen_perplexity_sft"] == pytest.approx(math.exp(metrics["chosen_loss_sft"]), rel=1e-5)
    assert metrics["oracle_win_rate_ci_low"] <= metrics["oracle_win_rate"] <= metrics["oracle_win_rate_ci_high"]
    assert metrics["rm_win_rate_lc_ci_low"] <= metrics["rm_win_rate_lc"] <= metrics["rm_win_rate_lc_ci_high"]
    assert {"repetition_sft", "distinct2_policy", "empty_share_policy", "cutoff_share_sft",
            "fluency_perplexity_policy", "fluency_perplexity_sft"} <= set(metrics)
    assert metrics["kl_policy_sft"] > -0.5  # an estimate of a non-negative quantity; noisy on 12 samples
    # one reward model: no disagreement to rise, so the uncertainty check passes
    assert metrics["rm_std_sft"] == metrics["rm_std_policy"] == metrics["rm_uncertainty_rise"] == 0
    assert metrics["gate_rm_uncertainty_rise"] is True
    assert metrics["rm_member_min_accuracy"] == metrics["rm_ensemble_accuracy"]
    samples = [json.loads(line) for line in (work / "metrics/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and {"prompt", "sft_answer", "policy_answer", "policy_oracle"} <= set(samples[0])
    hist = json.loads((work / "metrics/plots/reward_hist.json").read_text())
    assert sum(r["sft"] for r in hist) == sum(r["policy"] for r in hist) == 12
    frontier = json.loads((work / "metrics/plots/frontier.json").read_text())
    assert frontier[0]["method"] == "dpo" and frontier[0]["kl"] == metrics["kl_policy_sft"]
    assert frontier[0]["reward"] == pytest.approx(metrics["oracle_mean_policy"], abs=1e-6)


def test_cached_sft_answers_give_the_same_evaluation(evaluated):
    """The evaluate stage's output, with the SFT side from the sft_answers stage, equals rlhf.evaluate.measure computing
    that side itself: every metric, sample and plot value, exactly (same machine; sampling reseeds at each call)."""
    work = evaluated
    params = config.load(work / "params.yaml")
    metrics, samples, plots = evaluate.measure(params, layout().under(work), cached_sft=False)
    assert json.loads(json.dumps(metrics)) == json.loads((work / "metrics/eval.json").read_text())
    written = [json.loads(line) for line in (work / "metrics/samples.jsonl").read_text().splitlines()]
    assert json.loads(json.dumps(samples)) == written and len(written) == 3
    for name, rows in plots.items():
        assert json.loads(json.dumps(rows)) == json.loads((work / f"metrics/plots/{name}.json").read_text()), name


def test_sft_answers_for_other_prompts_are_refused(evaluated):
    validation = tokenize.load_split(evaluated / "data/tokenized", "validation", 10**9)
    assert len(sft_answers.load(evaluated / "data/sft_answers", validation, 12)["answers"]) == 12
    with pytest.raises(UserError, match=r"other validation rows or another eval.num_prompts.*dvc repro sft_answers"):
        sft_answers.load(evaluated / "data/sft_answers", validation, 8)


def test_sft_answers_of_an_older_stage_are_refused(evaluated, tmp_path):
    """A data/sft_answers written before the stage saved the answers' log-probs is refused by name, not a KeyError."""
    from datasets import load_from_disk

    saved = load_from_disk(str(evaluated / "data/sft_answers"))
    saved["answers"] = saved["answers"].remove_columns(["answer_logps", "answer_tokens"])
    saved.save_to_disk(str(tmp_path / "old"))
    validation = tokenize.load_split(evaluated / "data/tokenized", "validation", 10**9)
    with pytest.raises(UserError, match=r"no 'answer_logps' column.*dvc repro sft_answers"):
        sft_answers.load(tmp_path / "old", validation, 12)
