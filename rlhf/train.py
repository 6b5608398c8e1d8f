"""What every training stage shares: the memory preset, hardware checks, model loading with LoRA / QLoRA, the
tokenized data with its row check, and tracking (DVCLive always, Weights & Biases as an option)."""
import dataclasses
import os
from pathlib import Path

import torch

from rlhf import base, launch, resuming, tokenize
from rlhf.config import Lora, Model, Params, Training
from rlhf.io import UserError, read_json

# compute.preset: the values it fills in where params.yaml says null. Explicit values always win.
PRESETS = {
    "low_memory": {"r": 16, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 8, "max_length": 1024},
    "standard": {"r": 64, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "max_length": 2048},
    # The embedded default on a laptop or CI machine: the tiny model, short sequences, big batches.
    "cpu": {"r": 16, "per_device_train_batch_size": 32, "gradient_accumulation_steps": 1, "max_length": 512},
}
LOW_MEMORY_GB = 8  # below this much accelerator memory, `auto` picks low_memory


def accelerator_memory_gb() -> float | None:
    """Memory of the first CUDA device in GB, or None on a machine without one."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 1e9


def choose_preset(preset: str, memory_gb: float | None) -> str:
    """The preset `auto` stands for, given the accelerator memory (None: no accelerator)."""
    if preset != "auto":
        return preset
    if memory_gb is None:
        return "cpu"
    return "low_memory" if memory_gb < LOW_MEMORY_GB else "standard"


def resolve_modules_to_save(lora: Lora, model_name: str) -> list[str] | None:
    """What `lora.modules_to_save: auto` stands for: a trained copy of the output layer for the built-in tiny model
    (LoRA alone could not move its answers, see README), none for any other model, where the copy of the output
    layer is large (150k x 1536 on a 1.5B Qwen: about 0.9 GB of fp32 weights, plus Adam state, in every stage)."""
    if lora.modules_to_save != "auto":
        return lora.modules_to_save
    return ["lm_head"] if model_name == "builtin:tiny" else None


def model_settings(params: Params) -> dict:
    """How the model is loaded and trained, as recorded in every training stage's metrics: the dtype `auto` resolved
    to, the quantization, the modules trained in full, and activation checkpointing."""
    return {"dtype": str(torch_dtype(params.model)).removeprefix("torch."), "quantization": params.model.quantization,
            "modules_to_save": resolve_modules_to_save(params.lora, params.model.name),
            "activation_checkpointing": params.compute.activation_checkpointing}


def resolve(params: Params, section: Training, memory_gb: float | None) -> tuple[Training, Lora, dict]:
    """`section` and `params.lora` with every null (and `auto`) filled in, and a record of what was chosen."""
    name = choose_preset(params.compute.preset, memory_gb)
    values = PRESETS[name]
    filled = {k: values[k] for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length")
              if getattr(section, k, 0) is None}
    section = dataclasses.replace(section, **filled)
    r = params.lora.r or values["r"]
    lora = dataclasses.replace(params.lora, r=r, lora_alpha=params.lora.lora_alpha or 2 * r,
                               modules_to_save=resolve_modules_to_save(params.lora, params.model.name))
    chosen = {"preset": name, "accelerator_memory_gb": memory_gb and round(memory_gb, 1), "lora_r": lora.r,
              "lora_alpha": lora.lora_alpha, "per_device_train_batch_size": section.per_device_train_batch_size,
              "gradient_accumulation_steps": section.gradient_accumulation_steps,
              "max_length": getattr(section, "max_length", None), **model_settings(params)}
    return section, lora, chosen


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


def torch_dtype(cfg: Model) -> torch.dtype:
    if cfg.dtype == "auto":
        if not torch.cuda.is_available():
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, cfg.dtype)


def precision_args(cfg: Model) -> dict:
    """TrainingArguments for mixed precision (TRL's configs default bf16 on: set it explicitly)."""
    dtype = torch_dtype(cfg)
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16, "use_cpu": not torch.cuda.is_available()}


def kbit_device() -> int | str:
    """Where bitsandbytes quantizes the weights: this process's GPU (LOCAL_RANK under a launcher), or the CPU."""
    return int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.is_available() else "cpu"


def to_accelerator(model, cfg: Model):
    """`model` on the GPU if there is one (k-bit weights are put there when loaded)."""
    return model.to("cuda") if torch.cuda.is_available() and cfg.quantization == "none" else model


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


def load_model(base_dir: str | Path, cfg: Model, task: str = "causal"):
    """The base model recorded in `base_dir`, for causal LM (`causal`) or as a one-output scorer (`reward`),
    quantized with bitsandbytes if model.quantization asks for it (on the GPU of this process, or the CPU)."""
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
        kwargs["device_map"] = {"": kbit_device()}
    if task == "causal":
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, **kwargs)
    if model.config.pad_token_id is None:  # the reward head reads the last non-padding token
        model.config.pad_token_id = base.load_tokenizer(base_dir).pad_token_id
    if cfg.quantization == "4bit":
        check_cpu_4bit_shapes(model)
    if cfg.quantization != "none":
        from peft import prepare_model_for_kbit_training

        # Its default also turns activation checkpointing on; that is compute.activation_checkpointing's call, made
        # by the trainers (common_args) alike for k-bit and full-precision models.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def trainable_in_float32(model) -> None:
    """Undo TRL's cast of a k-bit model's trainable weights to bf16 (the QLoRA paper's choice, made by TRL's SFT,
    reward, DPO, KTO and GRPO trainers): a bf16 copy of lm_head (modules_to_save) meets the fp32 hidden states that
    prepare_model_for_kbit_training leaves, and fails outside autocast (measured: every fp32 run on CPU, and our
    own scoring after training). fp32 trainable weights match the fp32 weights around them. Full-precision models
    are left as the trainer made them (with bf16 weights, a bf16 lm_head copy is what works outside autocast)."""
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def lora_config(lora: Lora, task_type: str):
    """peft.LoraConfig from the lora section. A scorer (SEQ_CLS) has no LM head to save; PEFT trains its score head
    on its own."""
    from peft import LoraConfig

    fields = dataclasses.asdict(lora)
    if task_type == "SEQ_CLS" and fields["modules_to_save"]:
        fields["modules_to_save"] = [m for m in fields["modules_to_save"] if m != "lm_head"] or None
    return LoraConfig(task_type=task_type, **fields)


def load_split(tokenized: str | Path, split: str, max_length: int):
    """One tokenized split, checked against the manifest, and refused if any row would not fit `max_length`
    (the trainers would truncate or drop it without saying so)."""
    from datasets import load_from_disk

    manifest = read_json(Path(tokenized) / tokenize.MANIFEST)
    # In memory: a dataset mapped while backed by files writes cache files beside them, inside a DVC output.
    dataset = load_from_disk(str(tokenized), keep_in_memory=True)[split]
    tokenize.check_rows(dataset, manifest, split)
    if manifest[split]["max_length"] > max_length:
        raise UserError(
            f"the longest {split} pair is {manifest[split]['max_length']} tokens but the training max_length is "
            f"{max_length}: the trainer would cut or drop rows. Raise max_length in params.yaml, or lower "
            "tokenize.max_prompt_length + tokenize.max_completion_length."
        )
    return dataset


def open_live(live_dir: str | Path):
    """A DVCLive logger writing into `live_dir` (curves only: our dvc.yaml declares the plots), or None where DVCLive
    cannot run, e.g. in a git repo with no commit yet: training goes on without curves."""
    from dvclive import Live

    class StudioAwareLive(Live):
        def post_data_to_studio(self):
            # DVCLive 3.49 re-reads params.yaml and every curve after each logged step to queue them for DVC Studio,
            # even when Studio is not configured and the queue drops them: 40 ms a step, 8% of SFT's training time
            # on the built-in task (profiled against plain TRL, see bench/). Post only where Studio is set up.
            if "data" not in self._studio_events_to_skip:
                super().post_data_to_studio()

    if not launch.is_main_process():  # one writer for the curves
        return None
    try:
        return StudioAwareLive(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    except Exception as err:
        print(f"warning: DVCLive is off for this run ({type(err).__name__}: {err})")
        return None


def trackers(tracking, live_dir: str | Path) -> tuple[list[str], list]:
    """(report_to, callbacks): DVCLive into `live_dir`, plus offline-capable wandb when tracking.wandb is on.
    A missing or unreachable backend never stops a run."""
    from transformers.integrations import DVCLiveCallback

    live = open_live(live_dir)
    callbacks = [DVCLiveCallback(live=live)] if live is not None else []
    report_to = []
    if tracking.wandb:
        try:
            import wandb  # noqa: F401

            os.environ.setdefault("WANDB_MODE", "offline")  # sync later with `wandb sync`, if wanted
            os.environ.setdefault("WANDB_PROJECT", tracking.wandb_project)
            os.environ.setdefault("WANDB_SILENT", "true")
            report_to.append("wandb")
        except ImportError:
            print("warning: tracking.wandb is on but wandb is not installed; logging to DVCLive only")
    return report_to, callbacks


def common_args(section: Training, params: Params, checkpoints: str | Path, report_to: list[str]) -> dict:
    """TrainingArguments shared by every training stage: the params section plus what we pin for
    reproducibility, checkpointing and CPU runs."""
    return {
        **dataclasses.asdict(section),
        **precision_args(params.model),
        "output_dir": str(checkpoints),
        "seed": params.seed,
        "data_seed": params.seed,
        "save_strategy": "steps",
        "save_total_limit": 2,
        "eval_strategy": "steps",
        "per_device_eval_batch_size": section.per_device_train_batch_size,
        "report_to": report_to,
        # TRL's configs default it on; set it from params for every model, k-bit or not (load_model leaves it off)
        "activation_checkpointing": params.compute.activation_checkpointing,
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": "non_padding",  # real tokens, summed over all processes
        "disable_tqdm": False,
    }


def last_logged(log_history: list[dict], key: str) -> float | None:
    values = [entry[key] for entry in log_history if key in entry]
    return values[-1] if values else None


def fit(trainer, out: str | Path, expected_rows: int, resume: str | None = None) -> dict:
    """Train (from `resume` if given), evaluate and save the adapter and tokenizer to `out`; returns the last logged
    value of every training metric, the evaluation metrics, steps and wall time. Refuses to train if the trainer
    dropped any row."""
    if len(trainer.train_dataset) != expected_rows:
        raise RuntimeError(f"the trainer kept {len(trainer.train_dataset)} of {expected_rows} training rows")
    wall = resuming.train_resumable(trainer, resume)
    evaluation = trainer.evaluate() if trainer.eval_dataset is not None else {}
    trainer.save_model(str(out))
    logged = {}
    for entry in trainer.state.log_history:
        if "train_loss" in entry:  # the Trainer's summary: after a resume it covers only the resumed part
            continue
        logged.update({k: v for k, v in entry.items() if "eval_" not in k})
    metrics = {**logged, **evaluation}
    # TRL's num_tokens counters live in the trainer object, not its checkpoints, so they restart on a resume;
    # num_input_tokens_seen is the Trainer's own count, restored with its state
    noise = ("runtime", "per_second", "epoch", "total_flos", "learning_rate", "step", "num_tokens")
    metrics = {k.replace("/", "_"): round(float(v), 6) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not any(n in k for n in noise)}
    return {**metrics, "steps": trainer.state.global_step, "train_seconds": round(wall, 2)}
