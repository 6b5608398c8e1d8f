"""A real architecture's size: a Qwen2-0.5B-shaped model with random weights, saved to a local folder and run
through the pipeline's own stages as a user's local model (`model.name: <folder>`), then ours against plain TRL."""
import dataclasses
from pathlib import Path

import torch

from bench import pipeline, trainers
from rlhf import config

# Qwen/Qwen2-0.5B's config.json (the fields that set its size); about 494M parameters.
QWEN2_0_5B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
              "max_position_embeddings": 32768, "rope_theta": 1e6}
# --quick: the same vocabulary (the embedding is most of the memory) on a narrow, 2-layer body.
QUICK_SHAPE = {**QWEN2_0_5B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4}
# Few rows: the end-of-training evaluation runs over all validation rows, which is slow at this size on a CPU.
# No lm_head copy, as `lora.modules_to_save: auto` gives a local model (the copy would be 136M trainable parameters);
# explicit here so the figures do not depend on that default.
SETTINGS = {"data.builtin.num_pairs": 100, "prepare.validation_size": 4, "lora.modules_to_save": None}
SETUP_STAGES = ("fetch", "prepare", "base", "tokenize")


def make_model(folder: Path, tokenizer_dir: Path, shape: dict) -> dict:
    """Random weights in the Qwen2 shape, saved with the tiny model's tokenizer (its ids are all below the vocab)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shape, pad_token_id=tokenizer.pad_token_id,
                                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "weights_mib": round(sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20, 1)}


def variants() -> dict:
    """(model.dtype, model.quantization) to measure: fp32 on a CPU; bf16 and 4-bit (QLoRA) on a CUDA GPU."""
    if torch.cuda.is_available():
        return {"bfloat16": ("bfloat16", "none"), "bfloat16_4bit": ("bfloat16", "4bit")}
    return {"float32": ("float32", "none")}


def run(clone: Path, work: Path, quick: bool, steps: int, batch: int, repeats: int) -> dict:
    shape = QUICK_SHAPE if quick else QWEN2_0_5B
    folder = work / "qwen2-0.5b-shaped"
    all_stages = pipeline.stages(clone)
    made = trainers.isolated(make_model, folder, clone / pipeline.first_out(all_stages["base"]), shape)
    # -- a user's project on that folder: fetch, prepare, base (resolves the local folder), tokenize
    root = work / "qwen-project"
    root.mkdir()
    config.write_with_overrides(clone / "params.yaml", root / "params.yaml", {**SETTINGS, "model.name": str(folder)})
    setup = {name: pipeline.timed(all_stages[name]["cmd"], root, root / f"{name}.log", pythonpath=clone)
             for name in SETUP_STAGES}
    params = config.load(root / "params.yaml")
    data = {"tokenized": root / pipeline.first_out(all_stages["tokenize"]),
            "base": root / pipeline.first_out(all_stages["base"]),
            "prepared": root / pipeline.first_out(all_stages["prepare"]), "weights": folder, "sft": None}
    results = {}
    for name, (dtype, quantization) in variants().items():
        model = dataclasses.replace(params.model, dtype=dtype, quantization=quantization)
        results[name] = trainers.compare(dataclasses.replace(params, model=model), data, steps, repeats, work, batch)
    return {"shape": "a reduced shape (--quick)" if quick else "Qwen2-0.5B", "config": shape,
            "per_device_train_batch_size": batch, "settings": SETTINGS, "model": made, "setup_stages": setup, **results}
