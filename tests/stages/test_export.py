"""The export stage: one folder plain transformers loads, equal to our policy; and the gate that keeps the weights of a
policy that got worse from being exported (only a card then, or a failed stage in strict mode)."""
import json

import pytest
import torch

from rlhf import export, gate, models
from rlhf.config import Gate
from rlhf.io import UserError
from tests.conftest import evaluate_stages, repo_section, run_stage, write_params, TINY
from tests.stages.test_align import run_align

GOOD = {"rm_win_rate": 0.7, "oracle_win_rate": 0.6, "kl_policy_sft": 1.5, "length_sft": 10.0, "length_policy": 12.0,
        "chosen_perplexity_sft": 3.0, "chosen_perplexity_policy": 3.3, "repetition_policy": 0.05,
        "empty_share_policy": 0.0, "cutoff_share_policy": 0.02, "distinct2_policy": 0.9,
        "distinct2_sft": 1.0, "rm_uncertainty_rise": 0.1}
DEGENERATION = {"max_repetition": 0.2, "max_empty_share": 0.05, "max_cutoff_share": 0.1, "min_distinct2_ratio": 0.5,
                "max_uncertainty_rise": 0.2}
GATE = Gate(min_rm_win_rate=0.5, min_oracle_win_rate=0.4, max_kl=4.0, max_length_change=0.4, max_perplexity_rise=0.5,
            **DEGENERATION)


def test_gate_passes_a_policy_within_every_threshold():
    assert gate.failures(GOOD, GATE) == []


@pytest.mark.parametrize("key, value, check", [
    ("rm_win_rate", 0.45, "rm_win_rate = 0.45 (must be >= 0.5, eval.gate.min_rm_win_rate)"),
    ("oracle_win_rate", 0.3, "oracle_win_rate = 0.3 (must be >= 0.4, eval.gate.min_oracle_win_rate)"),
    ("kl_policy_sft", 5.0, "kl_policy_sft = 5 (must be <= 4, eval.gate.max_kl)"),
    ("length_policy", 5.0, "length_change = -0.5 (must be within +-0.4, eval.gate.max_length_change)"),  # 5/10 - 1
    ("length_policy", 15.0, "length_change = 0.5 (must be within +-0.4, eval.gate.max_length_change)"),
    ("chosen_perplexity_policy", 6.0, "perplexity_rise = 1 (must be <= 0.5, eval.gate.max_perplexity_rise)"),  # 6/3-1
    ("repetition_policy", 0.9, "repetition_policy = 0.9 (must be <= 0.2, eval.gate.max_repetition)"),
    ("empty_share_policy", 0.1, "empty_share_policy = 0.1 (must be <= 0.05, eval.gate.max_empty_share)"),
    ("cutoff_share_policy", 0.25, "cutoff_share_policy = 0.25 (must be <= 0.1, eval.gate.max_cutoff_share)"),
    ("distinct2_policy", 0.26, "distinct2_ratio = 0.26 (must be >= 0.5, eval.gate.min_distinct2_ratio)"),  # 0.26/1
    ("rm_uncertainty_rise", 0.25, "rm_uncertainty_rise = 0.25 (must be <= 0.2, eval.gate.max_uncertainty_rise)"),
])
def test_gate_names_each_failed_check_with_value_and_threshold(key, value, check):
    assert gate.failures({**GOOD, key: value}, GATE) == [check]


def test_gate_check_off_when_null_or_without_an_oracle():
    bad = {**GOOD, "kl_policy_sft": 50.0}
    assert gate.failures(bad, Gate(max_kl=None, min_rm_win_rate=0.5, min_oracle_win_rate=0.4,
                                            max_length_change=0.4, max_perplexity_rise=0.5, **DEGENERATION)) == []
    no_oracle = {k: v for k, v in GOOD.items() if k != "oracle_win_rate"}
    assert gate.failures(no_oracle, GATE) == []  # a hub dataset has no oracle to check


def test_verdict_is_one_boolean_per_check_that_ran():
    """metrics/eval.json's gate keys: short booleans for `dvc exp show`, no reasons (those are long strings)."""
    bad = {**GOOD, "kl_policy_sft": 5.0}
    del bad["oracle_win_rate"]  # no oracle: its check does not run, and has no key
    assert gate.verdict(bad, GATE) == {
        "gate_passed": False, "gate_rm_win_rate": True, "gate_kl_policy_sft": False, "gate_length_change": True,
        "gate_perplexity_rise": True, "gate_repetition_policy": True, "gate_empty_share_policy": True,
        "gate_cutoff_share_policy": True, "gate_distinct2_ratio": True, "gate_rm_uncertainty_rise": True}
    assert gate.verdict(GOOD, GATE)["gate_passed"] is True


def failed_gate_workdir(root, mode: str):
    """A workdir whose metrics/eval.json fails the repo's eval.gate on KL (5 > 4) and whose models/export holds a
    previous export; params are the repo's with export.on_failed_gate = `mode`."""
    (root / "models/export").mkdir(parents=True)
    (root / "models/export/model.safetensors").write_text("previous")
    (root / "models/base").mkdir()
    (root / "models/base/base.json").write_text(json.dumps({"weights": "builtin:tiny"}))
    (root / "metrics").mkdir()
    (root / "metrics/eval.json").write_text(json.dumps({**GOOD, "kl_policy_sft": 5.0, "gate_passed": False}))
    write_params(root / "params.yaml", {"export.on_failed_gate": mode})
    return root


EXPORT_ARGS = ("--base", "models/base", "--sft", "models/sft", "--policy", "models/policy",
               "--eval-metrics", "metrics/eval.json", "--export", "models/export")


def test_a_failed_gate_exports_only_a_card_naming_the_failed_checks(tmp_path, capsys):
    """The default (export.on_failed_gate: card): the stage succeeds (a method that loses is a result), and
    models/export holds no weights, only a card that says which check failed, with its value and threshold."""
    work = failed_gate_workdir(tmp_path, "card")
    run_stage(work, "export", *EXPORT_ARGS)
    assert [p.name for p in (work / "models/export").iterdir()] == ["README.md"]
    card = (work / "models/export/README.md").read_text()
    assert card.count("kl_policy_sft = 5 (must be <= 4, eval.gate.max_kl)") == 2  # the list and the facts table
    assert "# Not exported: the dpo policy failed eval.gate" in card and "from_pretrained" not in card
    assert "kl_policy_sft = 5 (must be <= 4, eval.gate.max_kl)" in capsys.readouterr().out


def test_strict_mode_refuses_a_failed_gate_and_keeps_the_previous_export(tmp_path):
    work = failed_gate_workdir(tmp_path, "fail")
    with pytest.raises(UserError, match=r"export refused: the policy failed eval.gate: kl_policy_sft = 5 \(must be "
                                        r"<= 4, eval.gate.max_kl\).*export.on_failed_gate"):
        run_stage(work, "export", *EXPORT_ARGS)
    assert (work / "models/export/model.safetensors").read_text() == "previous"


@pytest.fixture(scope="module")
def exported(tiny_trained, tmp_path_factory):
    """A tiny DPO policy, evaluated, then exported despite the gate (tiny runs are too short to pass it)."""
    work = run_align(tiny_trained, tmp_path_factory.mktemp("export"), "dpo",
                     **{"export.on_failed_gate": "export", "eval.num_prompts": 16, "eval.num_samples": 2})
    evaluate_stages(work)
    run_stage(work, "export", "--base", "models/base", "--sft", "models/sft", "--policy", "models/policy",
              "--eval-metrics", "metrics/eval.json", "--export", "models/export")
    return work


def test_plain_transformers_loads_the_export_and_it_equals_our_policy(exported):
    """No PEFT, no project code: same log-probs as base + SFT adapter + policy adapter, and the same greedy answers.
    Catches: a merge that drops an adapter, a trained lm_head copy re-tied to the embeddings on load, a wrong dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = AutoModelForCausalLM.from_pretrained(exported / "models/export").eval()
    assert not hasattr(plain, "peft_config")
    ours = models.policy(exported / "models/base", exported / "models/sft", exported / "models/policy",
                                     repo_section("model"))
    tokenizer = AutoTokenizer.from_pretrained(exported / "models/export")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Write a review of the film."}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = prompt["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits.log_softmax(-1), ours(ids).logits.log_softmax(-1),
                                   atol=1e-4, rtol=1e-4)
        greedy = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert plain.generate(ids, **greedy).tolist() == ours.generate(input_ids=ids, **greedy).tolist()
    assert plain.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_model_card_is_written_from_facts(exported):
    card = (exported / "models/export/README.md").read_text()
    metrics = json.loads((exported / "metrics/eval.json").read_text())
    assert "library_name: transformers" in card and "| method | dpo |" in card
    assert f'"kl_policy_sft": {metrics["kl_policy_sft"]}' in card
    assert "builtin:sentiment" in card and "FAILED, exported anyway (export.on_failed_gate): " in card
    assert '"beta": 0.1' in card  # the method's params


def test_a_bad_policy_is_stopped_at_export(tiny_trained, tmp_path):
    """A DPO run with a learning rate far too high wrecks the policy; evaluate's default gate fails it, and export
    ships no weights, only a card naming the failed checks."""
    work = run_align(tiny_trained, tmp_path, "dpo", **{"dpo.learning_rate": 3.0, "eval.num_prompts": 32,
                                                       "eval.num_samples": 0, "export.on_failed_gate": "card"})
    evaluate_stages(work)
    metrics = json.loads((work / "metrics/eval.json").read_text())
    failed = [k for k, v in metrics.items() if k.startswith("gate_") and v is False]
    assert metrics["gate_passed"] is False and len(failed) >= 2  # gate_passed and at least one check
    run_stage(work, "export", *EXPORT_ARGS)
    assert [p.name for p in (work / "models/export").iterdir()] == ["README.md"]
    card = (work / "models/export/README.md").read_text()
    assert all(f"- {name.removeprefix('gate_')} = " in card for name in failed if name != "gate_passed")
