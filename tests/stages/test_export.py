"""The export stage: one folder plain transformers loads, equal to our policy; and the gate that stops a policy that
got worse from being exported."""
import json

import pytest
import torch

from rlhf import evaluate, export, models
from rlhf.config import Gate
from rlhf.io import UserError
from tests.conftest import evaluate_stages, repo_section, run_stage, write_params, TINY
from tests.stages.test_align import run_align

GOOD = {"rm_win_rate": 0.7, "oracle_win_rate": 0.6, "kl_policy_sft": 1.5, "length_sft": 10.0, "length_policy": 12.0,
        "chosen_perplexity_sft": 3.0, "chosen_perplexity_policy": 3.3, "repetition_policy": 0.05,
        "empty_share_policy": 0.0, "cutoff_share_policy": 0.02}
DEGENERATION = {"max_repetition": 0.2, "max_empty_share": 0.05, "max_cutoff_share": 0.1}
GATE = Gate(min_rm_win_rate=0.5, min_oracle_win_rate=0.4, max_kl=4.0, max_length_change=0.4, max_perplexity_rise=0.5,
            **DEGENERATION)


def test_gate_passes_a_policy_within_every_threshold():
    assert evaluate.gate_failures(GOOD, GATE) == []


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
])
def test_gate_names_each_failed_check_with_value_and_threshold(key, value, check):
    assert evaluate.gate_failures({**GOOD, key: value}, GATE) == [check]


def test_gate_check_off_when_null_or_without_an_oracle():
    bad = {**GOOD, "kl_policy_sft": 50.0}
    assert evaluate.gate_failures(bad, Gate(max_kl=None, min_rm_win_rate=0.5, min_oracle_win_rate=0.4,
                                            max_length_change=0.4, max_perplexity_rise=0.5, **DEGENERATION)) == []
    no_oracle = {k: v for k, v in GOOD.items() if k != "oracle_win_rate"}
    assert evaluate.gate_failures(no_oracle, GATE) == []  # a hub dataset has no oracle to check


def test_export_refuses_a_failed_gate_and_keeps_the_previous_export(tmp_path, monkeypatch):
    (tmp_path / "models/export").mkdir(parents=True)
    (tmp_path / "models/export/model.safetensors").write_text("previous")
    failed = {**GOOD, "gate_passed": False, "gate_failed": "kl_policy_sft = 5 (must be <= 4, eval.gate.max_kl)"}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/eval.json").write_text(json.dumps(failed))
    write_params(tmp_path / "params.yaml", {})
    with pytest.raises(UserError, match=r"failed eval.gate: kl_policy_sft = 5 \(must be <= 4, eval.gate.max_kl\).*"
                                        r"export.ignore_gate"):
        run_stage(tmp_path, "export", "--base", "models/base", "--sft", "models/sft", "--policy", "models/policy",
                  "--eval-metrics", "metrics/eval.json", "--export", "models/export")
    assert (tmp_path / "models/export/model.safetensors").read_text() == "previous"


@pytest.fixture(scope="module")
def exported(tiny_trained, tmp_path_factory):
    """A tiny DPO policy, evaluated, then exported with the gate ignored (tiny runs are too short to pass it)."""
    work = run_align(tiny_trained, tmp_path_factory.mktemp("export"), "dpo",
                     **{"export.ignore_gate": True, "eval.num_prompts": 16, "eval.num_samples": 2})
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
    assert "builtin:sentiment" in card and "FAILED and exported anyway" in card
    assert '"beta": 0.1' in card  # the method's params


def test_a_bad_policy_is_stopped_at_export(tiny_trained, tmp_path):
    """A DPO run with a learning rate far too high wrecks the policy; evaluate's default gate fails it and export
    refuses, naming the failed checks."""
    work = run_align(tiny_trained, tmp_path, "dpo", **{"dpo.learning_rate": 3.0, "eval.num_prompts": 32,
                                                       "eval.num_samples": 0, "export.ignore_gate": False})
    evaluate_stages(work)
    metrics = json.loads((work / "metrics/eval.json").read_text())
    assert metrics["gate_passed"] is False and metrics["gate_failed"]
    with pytest.raises(UserError, match="export refused: the policy failed eval.gate"):
        run_stage(work, "export", "--base", "models/base", "--sft", "models/sft", "--policy", "models/policy",
                  "--eval-metrics", "metrics/eval.json", "--export", "models/export")
    assert not (work / "models/export").exists()
