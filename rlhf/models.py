"""The one place that turns a stage's output folder into a model or a tokenizer: the base, the SFT model, the reward
scorer and trained reward model, and the aligned policy, whose SFT reference is the same model with its align adapter
turned off (`reference`, TRL's `use_adapter(model, None)` idea), so no second copy of the base is loaded.

It decides quantization, dtype and device for every process: `device()` chooses, and `base_model`, which every
model here is built on, puts the weights there through `place` (k-bit weights when loaded, through bitsandbytes'
device_map). Adapters follow: PEFT creates them, and the trained copies of whole modules, on the device of the layer
they wrap. So no loader can forget the device. A TRL trainer places the models it trains again, on the same device.

Imports only config, io and base: the inference stages that load models do not depend on the training code."""
import contextlib
import os
from pathlib import Path

import torch

from rlhf import base
from rlhf.config import Model
from rlhf.io import UserError, read_json

POLICY_INFO_FILE = "align.json"  # written by the align stage: the method and the model its adapter was trained on
REWARD_STATS_FILE = "reward_stats.json"  # written by the reward stage per member: its validation score distribution
REWARD_ENSEMBLE_FILE = "ensemble.json"  # written by the reward stage: its members' folder names, ensemble accuracy
SFT_ADAPTER = "sft"  # the SFT adapter's name beside the policy's, on a policy trained from the base (ORPO init: base)


# -- device, dtype, quantization ----------------------------------------------------------------------------------

def device() -> torch.device:
    """This process's device: its GPU (LOCAL_RANK under a launcher), or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def place(model, cfg: Model):
    """`model` on `device()`. k-bit weights were put there when loaded (bitsandbytes quantizes on the device they are
    loaded on, and they cannot be moved afterwards)."""
    return model if cfg.quantization != "none" else model.to(device())


def torch_dtype(cfg: Model) -> torch.dtype:
    if cfg.dtype == "auto":
        if not torch.cuda.is_available():
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, cfg.dtype)


def check_hardware(cfg: Model) -> None:
    """Refuse, before anything is loaded, what this machine cannot do, and say what to set instead. k-bit layers
    (bitsandbytes 0.50) and bf16 run on a CPU too (measured with the pinned stack, see README)."""
    cuda = torch.cuda.is_available()
    if cfg.dtype == "bfloat16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("model.dtype = bfloat16, but this GPU does not support bf16. Set model.dtype: float16 "
                        "(or auto).")
    if cfg.dtype == "float16" and not cuda:
        # Measured on CPU: SFT trains, but the trainer keeps fp32 copies of the trained modules on fp16 weights, and
        # the stage's own scoring of that model (outside autocast) then fails with a dtype mismatch.
        raise UserError("model.dtype = float16 does not run through the pipeline on a CPU (the trained model mixes "
                        "fp16 weights with fp32 trained modules, and scoring it fails). Set model.dtype: bfloat16, "
                        "which runs on CPU, or float32 / auto.")


def check_cpu_4bit_shapes(model) -> None:
    """bitsandbytes 0.50 runs 4-bit layers for inference on a CPU with AVX512-BF16 through a packed format that needs
    each layer's input size to be a multiple of the quantization block (64): otherwise the first evaluation fails
    with a reshape error (measured on a model of width 32). Real models' widths are multiples of 64."""
    bad = [f"{name} ({m.in_features} inputs)" for name, m in model.named_modules()
           if getattr(m, "support_avx512bf16_for_cpu", False) and m.weight.device.type == "cpu"
           and m.in_features % m.weight.quant_state.blocksize != 0]
    if bad:
        raise UserError(f"model.quantization = 4bit on this CPU needs every quantized layer's input size to be a "
                        f"multiple of 64 (bitsandbytes' CPU 4-bit kernels), but {', '.join(bad[:3])} "
                        f"{'is' if len(bad) == 1 else 'are'} not. Use model.quantization: 8bit or none for this "
                        "model, or (builtin:tiny) set model.tiny.hidden_size and intermediate_size to multiples of 64.")


# -- the artifacts --------------------------------------------------------------------------------------------------

def tokenizer(base_dir: str | Path):
    """The tokenizer the base stage saved (with its chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


def base_model(base_dir: str | Path, cfg: Model, task: str = "causal"):
    """The base model recorded in `base_dir`, for causal LM (`causal`) or as a one-output scorer (`reward`),
    quantized with bitsandbytes if model.quantization asks for it, on `device()`."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    check_hardware(cfg)
    name, revision = base.weights_location(base_dir)
    dtype = torch_dtype(cfg)
    kwargs = {"revision": revision, "dtype": dtype}
    if cfg.quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    elif cfg.quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if cfg.quantization != "none":  # bitsandbytes quantizes the weights on the device they are placed on
        kwargs["device_map"] = {"": device()}
    if task == "causal":
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, **kwargs)
    if model.config.pad_token_id is None:  # the reward head reads the last non-padding token
        model.config.pad_token_id = tokenizer(base_dir).pad_token_id
    if cfg.quantization == "4bit":
        check_cpu_4bit_shapes(model)
    if cfg.quantization != "none":
        from peft import prepare_model_for_kbit_training

        # Its default also turns activation checkpointing on; that is compute.activation_checkpointing's call, made
        # by the trainers (train.common_args) alike for k-bit and full-precision models.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return place(model, cfg)


def sft_merged(base_dir, sft_dir, cfg: Model):
    """The SFT model as plain weights: base + SFT adapter, merged. With model.quantization set, the merge goes into
    the k-bit weights (PEFT dequantizes, adds and requantizes), which rounds the SFT delta."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model(base_dir, cfg), sft_dir).merge_and_unload()


def starts_from_sft(method: str, orpo_init: str) -> bool:
    """Every method adds its adapter to the SFT model, except ORPO with `orpo.init: base`."""
    return not (method == "orpo" and orpo_init == "base")


def align_start(params, base_dir, sft_dir):
    """The model the align stage adds its adapter to: the SFT model, or the base (see `starts_from_sft`)."""
    if starts_from_sft(params.method, params.orpo.init):
        return sft_merged(base_dir, sft_dir, params.model)
    return base_model(base_dir, params.model)


def policy(base_dir, sft_dir, policy_dir, cfg: Model):
    """The aligned policy saved by the align stage, on the model its adapter was trained on, in eval mode. Under
    `reference(model)` it is the SFT model: the align adapter off, or, on a policy trained from the base, the SFT
    adapter on instead (loaded here as a second adapter, so the base is loaded once either way)."""
    from peft import PeftModel

    if read_json(Path(policy_dir) / POLICY_INFO_FILE)["starts_from"] == "sft":
        return PeftModel.from_pretrained(sft_merged(base_dir, sft_dir, cfg), policy_dir).eval()
    model = PeftModel.from_pretrained(base_model(base_dir, cfg), policy_dir)
    add_sft_adapter(model, sft_dir)
    return model.eval()


def add_sft_adapter(model, sft_dir) -> None:
    """Load the SFT adapter beside the align adapter of a policy trained from the base, for `reference`. The align
    adapter stays the active one."""
    model.load_adapter(str(sft_dir), adapter_name=SFT_ADAPTER)


@contextlib.contextmanager
def reference(model):
    """Within it, the policy `model` computes as the SFT model: its SFT adapter alone where it has one (a policy
    trained from the base), else its base weights (the SFT model merged) with the align adapter disabled."""
    if SFT_ADAPTER not in model.peft_config:
        with model.disable_adapter():
            yield model
        return
    active = model.active_adapter
    model.set_adapter(SFT_ADAPTER)
    try:
        yield model
    finally:
        model.set_adapter(active)


def scorer(base_dir, sft_dir, cfg: Model):
    """Base model as a one-output scorer with the SFT adapter merged in (the starting point of the reward model)."""
    from peft import PeftConfig, PeftModel

    model = base_model(base_dir, cfg, task="reward")
    adapter = PeftConfig.from_pretrained(sft_dir)
    adapter.task_type = None  # a causal-LM adapter on a scorer: the same layers, no generation wrapper
    return PeftModel.from_pretrained(model, sft_dir, config=adapter).merge_and_unload()


def reward_members(reward_dir) -> list[str]:
    """The member adapters' names (also their folders in `reward_dir`), as the reward stage listed them."""
    listing = Path(reward_dir) / REWARD_ENSEMBLE_FILE
    if not listing.is_file():
        raise UserError(f"{reward_dir}: no {REWARD_ENSEMBLE_FILE}, so this is not a reward model the reward stage "
                        "wrote (or an older version of the stage wrote it, with one adapter and no member folders): "
                        "rerun the reward stage (`dvc repro reward`).")
    return read_json(listing)["members"]


def reward_model(base_dir, sft_dir, reward_dir, cfg: Model):
    """The trained reward model, ready to score: the scorer loaded once, every ensemble member on it as a named
    adapter (its LoRA weights and its own copy of the score head), the first one active. Returns (model, one stats
    dict per member: its validation score distribution, for normalizing rewards, and its `adapter` name)."""
    from peft import PeftModel

    names = reward_members(reward_dir)
    model = PeftModel.from_pretrained(scorer(base_dir, sft_dir, cfg), Path(reward_dir) / names[0],
                                      adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(Path(reward_dir) / name), adapter_name=name)
    model.set_adapter(names[0])
    stats = [{**read_json(Path(reward_dir) / name / REWARD_STATS_FILE), "adapter": name} for name in names]
    return model.eval(), stats


@contextlib.contextmanager
def active_adapter(model, name: str | None):
    """Within it, `model` computes with its adapter `name` (and that adapter's copy of the score head); None leaves
    the model as it is (a scorer with no adapters to choose from)."""
    if name is None:
        yield model
        return
    before = model.active_adapter
    model.set_adapter(name)
    try:
        yield model
    finally:
        model.set_adapter(before)
