"""Precision (model.dtype) on a CPU, what the stage metrics record about how the model was loaded, and the
`lora.modules_to_save: auto` rule that keeps a real model from training a full copy of its output layer."""
import json

import pytest
import torch

from tests.conftest import REPO, TINY, repo_params, repo_section
from rlhf import config, models, train
from rlhf.io import UserError

FAST = {**TINY, "eval.num_prompts": 8, "align.oracle_eval_prompts": 4}


# -- default tier ---------------------------------------------------------------------------------------------------

def test_cpu_precision_checks(monkeypatch):
    """On a CPU: k-bit and bf16 pass the hardware check (measured to run, see the slow tests); fp16 is refused with
    the measured reason and what to set instead; auto means fp32."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for ok in (repo_section("model", quantization="4bit"), repo_section("model", quantization="8bit"), repo_section("model", dtype="bfloat16")):
        models.check_hardware(ok)
    with pytest.raises(UserError, match="float16 does not run through the pipeline on a CPU.*bfloat16"):
        models.check_hardware(repo_section("model", dtype="float16"))
    assert models.torch_dtype(repo_section("model")) == torch.float32
    assert train.precision_args(repo_section("model", dtype="bfloat16")) == {"bf16": True, "fp16": False, "use_cpu": True}


def test_settings_record_what_auto_resolved_to(monkeypatch):
    """The settings every training stage writes into its metrics: the dtype `auto` became, not the word auto."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    params = repo_params()
    assert train.model_settings(params) == {"dtype": "float32", "quantization": "none",
                                            "modules_to_save": ["lm_head"], "activation_checkpointing": False}
    params = repo_params({"model.name": "/models/qwen", "model.dtype": "bfloat16", "model.quantization": "4bit",
                          "compute.activation_checkpointing": True})
    _, lora, chosen = train.resolve(params, params.sft, None)
    assert {k: chosen[k] for k in ("dtype", "quantization", "modules_to_save", "activation_checkpointing")} == \
        {"dtype": "bfloat16", "quantization": "4bit", "modules_to_save": None, "activation_checkpointing": True}
    assert lora.modules_to_save is None


@pytest.mark.parametrize("name, setting, expected", [
    ("builtin:tiny", "auto", ["lm_head"]),
    ("/models/qwen2.5-1.5b", "auto", None),
    ("Qwen/Qwen2.5-1.5B-Instruct", "auto", None),
    ("/models/qwen2.5-1.5b", ["lm_head"], ["lm_head"]),  # an explicit list always wins
    ("builtin:tiny", None, None),
])
def test_modules_to_save_auto_follows_the_model(name, setting, expected):
    """`auto` trains a copy of lm_head for the tiny model only: on a 1.5B Qwen the copy would be 150k x 1536
    weights plus Adam state in every stage."""
    params = repo_params({"model.name": name, "lora.modules_to_save": setting})
    _, lora, chosen = train.resolve(params, params.sft, None)
    assert lora.modules_to_save == expected and chosen["modules_to_save"] == expected
    assert train.lora_config(lora, "CAUSAL_LM").modules_to_save == expected


def test_params_yaml_default_is_auto():
    assert config.load(REPO / "params.yaml").lora.modules_to_save == "auto"


def test_tiny_sft_trains_and_records_an_lm_head_copy(tiny_trained):
    """builtin:tiny under `auto`: the SFT adapter holds a trained copy of lm_head, and the metrics say so."""
    from safetensors import safe_open

    assert json.loads((tiny_trained / "metrics/sft.json").read_text())["modules_to_save"] == ["lm_head"]
    with safe_open(tiny_trained / "models/sft/adapter_model.safetensors", "pt") as f:
        assert any("lm_head" in k for k in f.keys())


# -- slow tier ------------------------------------------------------------------------------------------------------


