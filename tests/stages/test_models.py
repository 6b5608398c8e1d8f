"""rlhf/models.py: every model a stage runs is placed on the device `models.device()` chooses, and the base weights
are loaded no more often than the stage needs. No GPU here: the test spies on `models.place` (the one function that
moves weights to the device) and on transformers' loaders, and checks that every model loaded went through it."""
import contextlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf import models

from tests.conftest import TINY, evaluate_stages, reference_stage, repo_section, run_stage, write_params
from tests.stages.test_align import run_align


@contextlib.contextmanager
def watched(monkeypatch, device=torch.device("cpu")):
    """Within it, {"loaded": every model transformers loaded, "placed": every model models.place placed}, with
    models.device() faked to return `device` (a stand-in for a GPU: placement must ask it, not torch)."""
    seen = {"loaded": [], "placed": [], "devices": []}
    place = models.place

    def spy_place(model, cfg):
        seen["placed"].append(model)
        seen["devices"].append(models.device())
        return place(model, cfg)

    with monkeypatch.context() as patch:
        patch.setattr(models, "device", lambda: device)
        patch.setattr(models, "place", spy_place)
        for cls in (AutoModelForCausalLM, AutoModelForSequenceClassification):
            load = cls.from_pretrained
            patch.setattr(cls, "from_pretrained",
                          lambda *a, _load=load, **k: seen["loaded"].append(m := _load(*a, **k)) or m)
        yield seen


def assert_all_placed(seen, loads: int):
    """`loads` models were loaded, and each of them was placed on the faked device."""
    assert len(seen["loaded"]) == loads, f"loaded the base weights {len(seen['loaded'])} times, expected {loads}"
    for model in seen["loaded"]:
        assert any(model is placed for placed in seen["placed"]), f"{type(model).__name__} was never placed"
    assert all(d == torch.device("cpu") for d in seen["devices"])


INPUTS = ("--tokenized", "data/tokenized", "--base", "models/base", "--sft", "models/sft")


def test_every_stage_places_every_model_it_loads(tiny_trained, tmp_path, monkeypatch):
    """reference, reward, align (DPO, with its oracle check; PPO with a separate critic), sft_answers, evaluate and
    export: each model on the device, and the base loaded at most twice (the reward model and one policy, whose
    disabled adapter is the SFT reference; PPO's separate critic shares the reward model's weights)."""
    root = tmp_path / "dpo"
    for name in ("data/tokenized", "models/base", "models/sft", "models/reward"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(tiny_trained / name)
    write_params(root / "params.yaml", {**TINY, "method": "dpo", "eval.num_prompts": 4})
    with watched(monkeypatch) as seen:
        reference_stage(root)
    assert_all_placed(seen, 1)
    with watched(monkeypatch) as seen:
        run_stage(root, "reward", *INPUTS, "--reward", "models/reward-again", "--reward-metrics", "metrics/reward.json",
                  "--reward-live", "dvclive/reward", "--reward-checkpoints", "checkpoints/reward")
    assert_all_placed(seen, 1)
    with watched(monkeypatch) as seen:  # DPO's SFT model; the oracle check reuses it with the adapter off
        run_stage(root, "align", *INPUTS, "--reward", "models/reward", "--reference", "data/reference", "--policy",
                  "models/policy", "--align-metrics", "metrics/align.json", "--align-live", "dvclive/align", "--align-checkpoints",
                  "checkpoints/align")
    assert_all_placed(seen, 1)
    with watched(monkeypatch) as seen:
        run_stage(root, "sft_answers", *INPUTS, "--reward", "models/reward", "--sft-answers", "data/sft_answers")
    assert_all_placed(seen, 2)
    with watched(monkeypatch) as seen:
        run_stage(root, "evaluate", *INPUTS, "--reward", "models/reward", "--policy", "models/policy", "--sft-answers",
                  "data/sft_answers",
                  "--eval-metrics", "metrics/eval.json", "--samples", "metrics/samples.jsonl", "--eval-plots", "metrics/plots")
    assert_all_placed(seen, 2)
    with watched(monkeypatch) as seen:
        run_stage(root, "export", "--base", "models/base", "--sft", "models/sft", "--policy", "models/policy",
                  "--eval-metrics", "metrics/eval.json", "--export", "models/export")
    assert_all_placed(seen, 1)

    write_params(root / "params.yaml", {**TINY, "method": "ppo", "ppo.critic": "separate", "ppo.num_iterations": 1})
    with watched(monkeypatch) as seen:  # policy (reference: its adapter off), and the reward model shared by critic
        run_stage(root, "align", *INPUTS, "--reward", "models/reward", "--reference", "data/reference", "--policy",
                  "models/policy-ppo", "--align-metrics", "metrics/align-ppo.json", "--align-live", "dvclive/align-ppo",
                  "--align-checkpoints", "checkpoints/align-ppo")
    assert_all_placed(seen, 2)


def test_orpo_from_the_base_evaluates_with_one_policy_model(tiny_trained, tmp_path, monkeypatch):
    """ORPO with `orpo.init: base` has no SFT weights under its adapter: the SFT adapter is loaded beside it, so
    evaluate still loads the base twice, and under `models.reference` the model is the SFT model (up to merging)."""
    work = run_align(tiny_trained, tmp_path, "orpo", **{"eval.num_prompts": 4})
    with watched(monkeypatch) as seen:
        evaluate_stages(work)
    assert_all_placed(seen, 4)  # sft_answers 2, evaluate 2
    policy = models.policy(work / "models/base", work / "models/sft", work / "models/policy", repo_section("model"))
    sft = models.sft_merged(work / "models/base", work / "models/sft", repo_section("model")).eval()
    ids = torch.tensor([[3, 9, 27, 81, 50, 11]])
    with torch.no_grad():
        with models.reference(policy):
            torch.testing.assert_close(policy(ids).logits, sft(ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(policy(ids).logits, sft(ids).logits)  # the align adapter is back on
