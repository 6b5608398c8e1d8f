"""QLoRA end to end (slow tier): 4-bit and 8-bit pipelines, and their export."""
import dataclasses
import json
import pytest
import torch
from tests.conftest import repo_section, run_stage
from rlhf import config, models, sft, train
from rlhf.paths import layout
from tests.stages.test_quantization import logits, run_pipeline, validation_batch, wide_data, wide_sft


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_kbit_pipeline_sft_reward_dpo_evaluate(wide_data, tmp_path, quantization):
    """sft -> reward -> dpo -> evaluate with model.quantization set, on a CPU. Catches: a refusal of k-bit on CPU,
    layers that silently stay full precision, adapters that do not load back onto k-bit weights, a policy whose
    reference (adapter disabled) is not the SFT model it was trained against, and metrics that do not say how the
    model was loaded."""
    import bitsandbytes as bnb
    from safetensors.torch import load_file

    root = run_pipeline(wide_data, tmp_path / quantization, {"model.quantization": quantization})
    cfg = config.load(root / "params.yaml").model
    for name in ("sft", "reward", "align"):
        metrics = json.loads((root / f"metrics/{name}.json").read_text())
        assert (metrics["quantization"], metrics["dtype"]) == (quantization, "float32"), name
        # the reward model trains its score head, not an lm_head copy: its metrics say so
        assert metrics["modules_to_save"] == (None if name == "reward" else ["lm_head"]), name
        assert metrics["activation_checkpointing"] is False
    evaluation = json.loads((root / "metrics/eval.json").read_text())
    assert all(torch.isfinite(torch.tensor(v)) for k, v in evaluation.items() if not k.startswith("gate_"))

    # -- the layers really are k-bit, in every model a later stage loads
    base_dir, sft_dir, policy_dir = wide_data / "models/base", root / "models/sft", root / "models/policy"
    merged = models.sft_merged(base_dir, sft_dir, cfg).eval()
    scorer, _ = models.reward_model(base_dir, sft_dir, root / "models/reward", cfg)
    kind = {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}[quantization]
    for model in (merged, scorer):  # the scorer's layers are PEFT wrappers of its k-bit base layers
        layers = [getattr(m, "base_layer", m) for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))]
        assert len(layers) == 4 and all(isinstance(m, kind) for m in layers), [type(m) for m in layers]

    # -- the policy's adapter loads back with the weights the align stage saved, and moves the model
    trained = models.policy(base_dir, sft_dir, policy_dir, cfg)
    saved = load_file(policy_dir / "adapter_model.safetensors")
    loaded = {n.replace(".default", ""): p for n, p in trained.named_parameters() if "lora_B" in n}
    assert loaded and any(t.abs().sum() > 0 for n, t in saved.items() if "lora_B" in n)  # trained off zero init
    for name, tensor in saved.items():
        if "lora_B" in name:
            torch.testing.assert_close(loaded[name].detach(), tensor, rtol=0, atol=0)
    ids = validation_batch(wide_data)
    with trained.disable_adapter():
        reference = logits(trained, ids)
    assert not torch.allclose(logits(trained, ids), reference)

    # -- the reference (adapter disabled) is the merged SFT model: exactly, as the merge is deterministic ...
    torch.testing.assert_close(reference, logits(merged, ids), rtol=0, atol=1e-6)
    # ... and close to the SFT model as trained (k-bit base + unmerged adapter). The merge dequantizes each k-bit
    # weight, adds the LoRA delta and quantizes again, so each weight moves by up to half a quantization step: one
    # more round of the error that quantizing the base model made in the first place. Tolerance: twice that error,
    # measured on the same batch (k-bit base against fp32 base).
    from peft import PeftModel

    unmerged = PeftModel.from_pretrained(models.base_model(base_dir, cfg), sft_dir).eval()
    quantization_error = (logits(models.base_model(base_dir, cfg).eval(), ids)
                          - logits(models.base_model(base_dir, repo_section("model")).eval(), ids)).abs().max().item()
    merge_error = (reference - logits(unmerged, ids)).abs().max().item()
    sft_shift = (logits(unmerged, ids) - logits(models.base_model(base_dir, cfg).eval(), ids)).abs().max().item()
    print(f"{quantization}: merge error {merge_error:.4g}, base quantization error {quantization_error:.4g}, "
          f"SFT's own change {sft_shift:.4g}")
    assert merge_error <= 2 * quantization_error
    assert merge_error < sft_shift  # the merge kept the SFT delta: the reference is not the bare base model

    # -- export merges both adapters into an unquantized copy of the base: plain transformers loads it, no bnb
    from transformers import AutoModelForCausalLM

    run_stage(root, "export", "--base", str(base_dir), "--sft", "models/sft", "--policy", "models/policy",
              "--eval-metrics", "metrics/eval.json", "--export", "models/export")
    assert "quantization_config" not in json.loads((root / "models/export/config.json").read_text())
    exported = AutoModelForCausalLM.from_pretrained(root / "models/export").eval()
    layers = [m for n, m in exported.named_modules() if n.endswith(("q_proj", "down_proj"))]
    assert len(layers) == 4 and all(type(m) is torch.nn.Linear for m in layers)
    # it is the trained policy up to the base's quantization error (and the merge's rounding, which it avoids); on the
    # tiny models of the held-out split, 4-bit measured 0.584 against a base quantization error of 0.215 (2.7x)
    export_error = (logits(exported, ids) - logits(trained, ids)).abs().max().item()
    print(f"{quantization}: export (fp32 base + both adapters) against the k-bit policy: {export_error:.4g}")
    assert export_error <= 3 * quantization_error


@pytest.mark.parametrize("stage", ["sft", "dpo"])
@pytest.mark.parametrize("quantization", ["none", "4bit"])
@pytest.mark.parametrize("on", [False, True])
def test_activation_checkpointing_is_on_exactly_when_asked(wide_data, wide_sft, tmp_path, monkeypatch, stage,
                                                           quantization, on):
    """Inside the trainer's steps, the model checkpoints activations (and the backward pass recomputes them) if and
    only if compute.activation_checkpointing says so. Catches: prepare_model_for_kbit_training's default turning it
    on for k-bit models, TRL's configs defaulting it on, and the param not reaching a trainer."""
    import transformers.modeling_utils
    from transformers import TrainerCallback

    from rlhf.methods import dpo

    recomputed = []
    checkpoint = transformers.modeling_utils.checkpoint  # what activation_checkpointing_enable wraps the layers with
    monkeypatch.setattr(transformers.modeling_utils, "checkpoint",
                        lambda *args, **kwargs: recomputed.append(1) or checkpoint(*args, **kwargs))
    seen = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append((args.activation_checkpointing, model.is_activation_checkpointing))

    monkeypatch.setattr(train, "trackers", lambda tracking, live_dir: ([], [Probe()]))
    params = config.load(wide_data / "params.yaml")
    params = dataclasses.replace(
        params, model=dataclasses.replace(params.model, quantization=quantization),
        compute=dataclasses.replace(params.compute, activation_checkpointing=on),
        **{stage: dataclasses.replace(getattr(params, stage), max_steps=1)})
    paths = layout().under(wide_data).replace(sft=wide_sft, sft_checkpoints=tmp_path / "ck", sft_live=tmp_path / "live",
                                              align_checkpoints=tmp_path / "ck", align_live=tmp_path / "live")
    if stage == "sft":
        sft.train_sft(params, paths, tmp_path / "out")
    else:
        dpo.run(params, paths, tmp_path / "out")
    assert seen == [(on, on)]
    assert bool(recomputed) == on
