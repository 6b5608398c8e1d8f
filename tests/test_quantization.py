"""QLoRA on CPU: model.quantization 4bit / 8bit through sft -> reward -> dpo -> evaluate, what the merge into k-bit
weights costs, and compute.activation_checkpointing honoured by the trainers for k-bit and full-precision models."""
import dataclasses
import json

import pytest
import torch

from conftest import (TINY, data_stages, evaluate_stages, reference_stage, repo_params, repo_section, run_stage,
                      write_params)
from rlhf import align, config, policy, reward, sft, train
from rlhf.io import UserError

# bitsandbytes' CPU 4-bit kernels need layer input sizes that are multiples of 64 (train.check_cpu_4bit_shapes), so
# these runs widen TINY's model from 32 to 64; little data and few steps, as 4-bit layers are slow on a CPU.
WIDE = {**TINY, "model.tiny.hidden_size": 64, "model.tiny.intermediate_size": 128, "data.builtin.num_pairs": 60,
        "prepare.validation_size": 8, "eval.num_prompts": 8, "align.oracle_eval_prompts": 4,
        **{f"{s}.{k}": v for s in ("sft", "reward", "dpo")
           for k, v in {"max_steps": 2, "per_device_train_batch_size": 8, "eval_steps": 2, "save_steps": 2}.items()}}


def stage_args(data, root, name):
    """The command-line arguments of training stage `name`: inputs from the shared data folder, models in `root`."""
    inputs = {"tokenized": data / "data/tokenized", "base": data / "models/base", "sft": root / "models/sft",
              "reward": root / "models/reward", "reference": root / "data/reference"}
    wanted = {"sft": ["tokenized", "base"], "reward": ["tokenized", "base", "sft"],
              "align": ["tokenized", "base", "sft", "reward", "reference"]}
    args = [x for key in wanted[name] for x in (f"--{key}", str(inputs[key]))]
    out = {"sft": "models/sft", "reward": "models/reward", "align": "models/policy"}[name]
    return args + ["--out", out, "--metrics", f"metrics/{name}.json", "--live", f"dvclive/{name}", "--checkpoints",
                   f"checkpoints/{name}"]


def run_pipeline(data, root, overrides: dict):
    """sft, reward, reference, align (dpo), sft_answers and evaluate in `root`, on the data stages' outputs in
    `data`."""
    root.mkdir(parents=True, exist_ok=True)
    write_params(root / "params.yaml", {**WIDE, **overrides})
    for name in ("sft", "reward"):
        run_stage(root, name, *stage_args(data, root, name))
    reference_stage(root, data / "data/tokenized", data / "models/base")
    run_stage(root, "align", *stage_args(data, root, "align"))
    evaluate_stages(root, data / "data/tokenized", data / "models/base")
    return root


@pytest.fixture(scope="session")
def wide_data(tmp_path_factory):
    """fetch, prepare, base and tokenize on WIDE settings."""
    return data_stages(tmp_path_factory.mktemp("wide"), WIDE)


def validation_batch(data, rows: int = 4) -> torch.Tensor:
    """The first validation sequences (prompt + chosen), cut to a common length: a batch without padding."""
    split = train.load_split(data / "data/tokenized", "validation", 10**9)
    seqs = [p + c for p, c in zip(split["prompt_ids"][:rows], split["chosen_ids"][:rows])]
    return torch.tensor([s[: min(map(len, seqs))] for s in seqs])


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


# -- default tier: the refusals -------------------------------------------------------------------------------------

def test_cpu_4bit_refuses_layer_widths_bitsandbytes_cannot_run(tiny_data):
    """TINY's model is 32 wide: bitsandbytes' CPU 4-bit inference packing would fail at the first evaluation with a
    reshape error; load_model says so before training, naming a layer."""
    import bitsandbytes as bnb

    if not bnb.nn.Linear4bit(64, 64).support_avx512bf16_for_cpu:
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes takes another path, which has no such limit")
    with pytest.raises(UserError, match=r"multiple of 64.*q_proj \(32 inputs\).*model.quantization: 8bit or none"):
        train.load_model(tiny_data / "models/base", repo_section("model", quantization="4bit"))


def test_ppo_refuses_activation_checkpointing():
    """Our PPO loop runs the model in eval mode, where transformers never checkpoints: the param would be ignored."""
    params = repo_params({"method": "ppo", "compute.activation_checkpointing": True})
    with pytest.raises(UserError, match="not supported by method ppo"):
        align.check_checkpointing(params)
    align.check_checkpointing(dataclasses.replace(params, method="grpo"))
    align.check_checkpointing(repo_params({"method": "ppo"}))


# -- slow tier: the whole pipeline on k-bit weights -----------------------------------------------------------------

@pytest.mark.slow
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
    merged = policy.load_sft_merged(base_dir, sft_dir, cfg).eval()
    scorer, _ = reward.load_reward_model(base_dir, sft_dir, root / "models/reward", cfg)
    kind = {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}[quantization]
    for model in (merged, scorer):  # the scorer's layers are PEFT wrappers of its k-bit base layers
        layers = [getattr(m, "base_layer", m) for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))]
        assert len(layers) == 4 and all(isinstance(m, kind) for m in layers), [type(m) for m in layers]

    # -- the policy's adapter loads back with the weights the align stage saved, and moves the model
    trained = align.load_trained_policy(base_dir, sft_dir, policy_dir, cfg)
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

    unmerged = PeftModel.from_pretrained(train.load_model(base_dir, cfg), sft_dir).eval()
    quantization_error = (logits(train.load_model(base_dir, cfg).eval(), ids)
                          - logits(train.load_model(base_dir, repo_section("model")).eval(), ids)).abs().max().item()
    merge_error = (reference - logits(unmerged, ids)).abs().max().item()
    sft_shift = (logits(unmerged, ids) - logits(train.load_model(base_dir, cfg).eval(), ids)).abs().max().item()
    print(f"{quantization}: merge error {merge_error:.4g}, base quantization error {quantization_error:.4g}, "
          f"SFT's own change {sft_shift:.4g}")
    assert merge_error <= 2 * quantization_error
    assert merge_error < sft_shift  # the merge kept the SFT delta: the reference is not the bare base model

    # -- export merges both adapters into an unquantized copy of the base: plain transformers loads it, no bnb
    from transformers import AutoModelForCausalLM

    run_stage(root, "export", "--base", str(base_dir), "--sft", "models/sft", "--policy", "models/policy",
              "--eval", "metrics/eval.json", "--out", "models/export")
    assert "quantization_config" not in json.loads((root / "models/export/config.json").read_text())
    exported = AutoModelForCausalLM.from_pretrained(root / "models/export").eval()
    layers = [m for n, m in exported.named_modules() if n.endswith(("q_proj", "down_proj"))]
    assert len(layers) == 4 and all(type(m) is torch.nn.Linear for m in layers)
    # it is the trained policy up to the base's quantization error (and the merge's rounding, which it avoids)
    export_error = (logits(exported, ids) - logits(trained, ids)).abs().max().item()
    print(f"{quantization}: export (fp32 base + both adapters) against the k-bit policy: {export_error:.4g}")
    assert export_error <= 2 * quantization_error


# -- slow tier: compute.activation_checkpointing inside real trainer runs -------------------------------------------

@pytest.fixture(scope="session")
def wide_sft(wide_data):
    """An SFT adapter (full precision) on the wide model, for DPO runs to start from."""
    run_stage(wide_data, "sft", *stage_args(wide_data, wide_data, "sft"))
    reference_stage(wide_data)  # DPO's reference log-probs, full precision (these tests check no values)
    return wide_data / "models/sft"


@pytest.mark.slow
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
    tokenized, base_dir = wide_data / "data/tokenized", wide_data / "models/base"
    if stage == "sft":
        sft.run_sft(params, tokenized, base_dir, tmp_path / "out", tmp_path / "ck", tmp_path / "live")
    else:
        dpo.run(params, tokenized, base_dir, wide_sft, tmp_path, wide_data / "data/reference", tmp_path / "out",
                tmp_path / "ck", tmp_path / "live")
    assert seen == [(on, on)]
    assert bool(recomputed) == on
