"""QLoRA on CPU: model.quantization 4bit / 8bit through sft -> reward -> dpo -> evaluate, what the merge into k-bit
weights costs, and compute.activation_checkpointing honoured by the trainers for k-bit and full-precision models."""
import dataclasses

import pytest
import torch

from tests.conftest import (TINY, data_stages, evaluate_stages, reference_stage, repo_params, repo_section, run_stage,
                      write_params)
from rlhf import align, models, tokenize
from rlhf.io import UserError

# bitsandbytes' CPU 4-bit kernels need layer input sizes that are multiples of 64 (models.check_cpu_4bit_shapes), so
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
    return [x for key in wanted[name] for x in (f"--{key}", str(inputs[key]))]


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
    split = tokenize.load_split(data / "data/tokenized", "validation", 10**9)
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
        models.base_model(tiny_data / "models/base", repo_section("model", quantization="4bit"))


def test_ppo_refuses_activation_checkpointing():
    """Our PPO loop runs the model in eval mode, where transformers never checkpoints: the param would be ignored."""
    params = repo_params({"method": "ppo", "compute.activation_checkpointing": True})
    with pytest.raises(UserError, match="not supported by method ppo"):
        align.check_checkpointing(params)
    align.check_checkpointing(dataclasses.replace(params, method="grpo"))
    align.check_checkpointing(repo_params({"method": "ppo"}))


# -- slow tier: the whole pipeline on k-bit weights -----------------------------------------------------------------


# -- slow tier: compute.activation_checkpointing inside real trainer runs -------------------------------------------

@pytest.fixture(scope="session")
def wide_sft(wide_data):
    """An SFT adapter (full precision) on the wide model, for DPO runs to start from."""
    run_stage(wide_data, "sft", *stage_args(wide_data, wide_data, "sft"))
    reference_stage(wide_data)  # DPO's reference log-probs, full precision (these tests check no values)
    return wide_data / "models/sft"


