"""Precision end to end (slow tier): a local model folder gets no lm_head copy; the whole pipeline in bf16 on a CPU."""
import json
import torch
from tests.conftest import evaluate_stages, reference_stage, run_stage, write_params
from rlhf import config, models
from tests.stages.test_precision import FAST


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
    run_stage(root, "base", "--prepared", prepared)
    run_stage(root, "tokenize", "--prepared", prepared)
    run_stage(root, "sft", "--tokenized", "data/tokenized", "--base", "models/base", "--sft", "models/sft",
              "--sft-metrics", "metrics/sft.json", "--sft-live", "dvclive/sft", "--sft-checkpoints", "checkpoints/sft")
    assert json.loads((root / "metrics/sft.json").read_text())["modules_to_save"] is None
    assert json.loads((root / "models/sft/adapter_config.json").read_text())["modules_to_save"] is None
    with safe_open(root / "models/sft/adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys), keys


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

    run_stage(root, "sft", *inputs("tokenized", "base"), "--sft", "models/sft", "--sft-metrics", "metrics/sft.json",
              "--sft-live", "dvclive/sft", "--sft-checkpoints", "checkpoints/sft")
    run_stage(root, "reward", *inputs("tokenized", "base", "sft"), "--reward", "models/reward", "--reward-metrics",
              "metrics/reward.json", "--reward-live", "dvclive/reward", "--reward-checkpoints", "checkpoints/reward")
    reference_stage(root, data["tokenized"], data["base"])
    run_stage(root, "align", *inputs("tokenized", "base", "sft", "reward"), "--reference", "data/reference", "--policy",
              "models/policy", "--align-metrics", "metrics/align.json", "--align-live", "dvclive/align", "--align-checkpoints",
              "checkpoints/align")
    evaluate_stages(root, data["tokenized"], data["base"])
    for name in ("sft", "reward", "align"):
        metrics = json.loads((root / f"metrics/{name}.json").read_text())
        assert (metrics["dtype"], metrics["quantization"]) == ("bfloat16", "none"), name
    evaluation = json.loads((root / "metrics/eval.json").read_text())
    numbers = [v for k, v in evaluation.items() if not k.startswith("gate_")]  # gate_*: the gate's verdict
    assert numbers and all(torch.isfinite(torch.tensor(v)) for v in numbers)
    cfg = config.load(root / "params.yaml").model
    merged = models.sft_merged(tiny_data / "models/base", root / "models/sft", cfg)
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
