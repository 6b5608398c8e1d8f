"""Precision (model.dtype) on a CPU, what the stage metrics record about how the model was loaded, and the
`lora.modules_to_save: auto` rule that keeps a real model from training a full copy of its output layer."""
import json

import pytest
import torch

from conftest import REPO, TINY, evaluate_stages, reference_stage, repo_params, repo_section, run_stage, write_params
from rlhf import config, policy, train
from rlhf.io import UserError

FAST = {**TINY, "eval.num_prompts": 8, "align.oracle_eval_prompts": 4}


# -- default tier ---------------------------------------------------------------------------------------------------

def test_cpu_precision_checks(monkeypatch):
    """On a CPU: k-bit and bf16 pass the hardware check (measured to run, see the slow tests); fp16 is refused with
    the measured reason and what to set instead; auto means fp32."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for ok in ({"quantization": "4bit"}, {"quantization": "8bit"}, {"dtype": "bfloat16"}):
        train.check_hardware(repo_section("model", **ok))
    with pytest.raises(UserError, match="float16 does not run through the pipeline on a CPU.*bfloat16"):
        train.check_hardware(repo_section("model", dtype="float16"))
    assert train.torch_dtype(repo_section("model")) == torch.float32
    bf16 = repo_section("model", dtype="bfloat16")
    assert train.precision_args(bf16) == {"bf16": True, "fp16": False, "use_cpu": True}


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

@pytest.mark.slow
def test_local_model_folder_gets_no_lm_head_copy(tiny_data, tmp_path):
    """A local model folder (not builtin:tiny) under `auto`: the SFT adapter holds LoRA weights only, and the stage
    metrics record modules_to_save null. Catches the trap the issue describes: a real model silently training a
    full copy of its output layer in every stage."""
    from safetensors import safe_open
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "my-llama"
    tokenizer = AutoTokenizer.from_pretrained(tiny_data / "models/base")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, bos_token_id=None)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    root = tmp_path / "project"
    root.mkdir()
    write_params(root / "params.yaml", {**FAST, "model.name": str(folder), "sft.max_steps": 1})
    prepared = str(tiny_data / "data/prepared")
    run_stage(root, "base", "--prepared", prepared, "--out", "models/base")
    run_stage(root, "tokenize", "--prepared", prepared, "--base", "models/base", "--out", "data/tokenized",
              "--metrics", "metrics/tokenize.json")
    run_stage(root, "sft", "--tokenized", "data/tokenized", "--base", "models/base", "--out", "models/sft",
              "--metrics", "metrics/sft.json", "--live", "dvclive/sft", "--checkpoints", "checkpoints/sft")
    assert json.loads((root / "metrics/sft.json").read_text())["modules_to_save"] is None
    assert json.loads((root / "models/sft/adapter_config.json").read_text())["modules_to_save"] is None
    with safe_open(root / "models/sft/adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys), keys


@pytest.mark.slow
def test_bf16_pipeline_on_cpu(tiny_data, tmp_path):
    """`model.dtype: bfloat16` on a CPU runs sft -> reward -> dpo -> evaluate, every training stage records bfloat16,
    and the models later stages load really hold bf16 weights."""
    root = tmp_path / "bf16"
    root.mkdir()
    write_params(root / "params.yaml", {**FAST, "model.dtype": "bfloat16"})
    data = {"tokenized": str(tiny_data / "data/tokenized"), "base": str(tiny_data / "models/base"),
            "sft": "models/sft", "reward": "models/reward"}

    def inputs(*names):
        return [x for n in names for x in (f"--{n}", data[n])]

    run_stage(root, "sft", *inputs("tokenized", "base"), "--out", "models/sft", "--metrics", "metrics/sft.json",
              "--live", "dvclive/sft", "--checkpoints", "checkpoints/sft")
    run_stage(root, "reward", *inputs("tokenized", "base", "sft"), "--out", "models/reward", "--metrics",
              "metrics/reward.json", "--live", "dvclive/reward", "--checkpoints", "checkpoints/reward")
    reference_stage(root, data["tokenized"], data["base"])
    run_stage(root, "align", *inputs("tokenized", "base", "sft", "reward"), "--reference", "data/reference", "--out",
              "models/policy", "--metrics", "metrics/align.json", "--live", "dvclive/align", "--checkpoints",
              "checkpoints/align")
    evaluate_stages(root, data["tokenized"], data["base"])
    for name in ("sft", "reward", "align"):
        metrics = json.loads((root / f"metrics/{name}.json").read_text())
        assert (metrics["dtype"], metrics["quantization"]) == ("bfloat16", "none"), name
    evaluation = json.loads((root / "metrics/eval.json").read_text())
    numbers = [v for k, v in evaluation.items() if not k.startswith("gate_")]  # gate_*: the gate's verdict
    assert numbers and all(torch.isfinite(torch.tensor(v)) for v in numbers)
    cfg = config.load(root / "params.yaml").model
    merged = policy.load_sft_merged(tiny_data / "models/base", root / "models/sft", cfg)
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
