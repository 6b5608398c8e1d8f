"""The align stage: every method trains a few steps and leaves a loadable adapter; the reference is the SFT model."""
import json

import pytest
import torch

from rlhf import align, models
from rlhf.config import METHODS
from rlhf.io import UserError
from tests.conftest import repo_section, run_stage, write_params, TINY


def run_align(tiny_trained, tmp_path, method, **overrides):
    """The align stage in its own folder that shares the tiny data and models."""
    for name in ("data", "models/base", "models/sft", "models/reward"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(tiny_trained / name)
    write_params(tmp_path / "params.yaml", {**TINY, "method": method, **overrides})
    run_stage(tmp_path, "align", "--tokenized", "data/tokenized", "--base", "models/base", "--sft", "models/sft",
              "--reward", "models/reward", "--reference", "data/reference", "--policy", "models/policy",
              "--align-metrics", "metrics/align.json", "--align-live", "dvclive/align", "--align-checkpoints", "checkpoints/align")
    return tmp_path


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(UserError, match="method = 'rlhf' is not an alignment method; available: dpo, orpo, ppo"):
        align.method_runner("rlhf")


@pytest.mark.parametrize("method", [m for m in METHODS if m != "ppo"])  # ppo: tests/test_ppo.py
def test_method_trains_and_saves_a_loadable_adapter(tiny_trained, tmp_path, method):
    work = run_align(tiny_trained, tmp_path, method)
    out = work / "models/policy"
    assert (out / "adapter_model.safetensors").exists()
    info = json.loads((out / align.INFO_FILE).read_text())
    assert info["method"] == method and method in info["params"]
    metrics = json.loads((work / "metrics/align.json").read_text())
    assert metrics["method"] == method and metrics["steps"] >= 2
    assert {"oracle_sft", "oracle_policy", "oracle_gain"} <= set(metrics)
    model = models.policy(work / "models/base", work / "models/sft", out, repo_section("model"))
    ids = torch.tensor([[5, 17, 23, 42, 7]])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
        with model.disable_adapter():
            without = model(ids).logits
        assert not torch.allclose(model(ids).logits, without)  # the adapter was trained


def test_dpo_reference_is_the_sft_model(tiny_trained, tmp_path):
    """With the new adapter disabled, the policy is exactly the SFT model: that is DPO's reference (ref_model=None)."""
    work = run_align(tiny_trained, tmp_path, "dpo")
    cfg = repo_section("model")
    trained = models.policy(work / "models/base", work / "models/sft", work / "models/policy", cfg)
    sft = models.sft_merged(work / "models/base", work / "models/sft", cfg).eval()
    ids = torch.tensor([[3, 9, 27, 81, 50, 11]])
    with torch.no_grad(), trained.disable_adapter():
        torch.testing.assert_close(trained(ids).logits, sft(ids).logits)


def test_orpo_starts_from_base_by_default(tiny_trained, tmp_path):
    work = run_align(tiny_trained, tmp_path, "orpo")
    assert json.loads((work / "models/policy" / align.INFO_FILE).read_text())["starts_from"] == "base"
