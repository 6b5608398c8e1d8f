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


def resolve(params: Params, section: Training, memory_gb: float | None) -> tuple[Training, Lora, dict]:
    """`section` and `params.lora` with every null filled from the preset, and a record of what was chosen."""
    name = choose_preset(params.compute.preset, memory_gb)
    values = PRESETS[name]
    filled = {k: values[k] for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length")
              if getattr(section, k, 0) is None}
    section = dataclasses.replace(section, **filled)
    r = params.lora.r or values["r"]
    lora = dataclasses.replace(params.lora, r=r, lora_alpha=params.lora.lora_alpha or 2 * r)
    chosen = {"preset": name, "accelerator_memory_gb": memory_gb and round(memory_gb, 1), "lora_r": lora.r,
              "lora_alpha": lora.lora_alpha, "per_device_train_batch_size": section.per_device_train_batch_size,
              "gradient_accumulation_steps": section.gradient_accumulation_steps,
              "max_length": getattr(section, "max_length", None)}
    return section, lora, chosen


def check_hardware(cfg: Model) -> None:
    """Refuse, before anything is loaded, what this machine cannot do, and say what to set instead."""
    cuda = torch.cuda.is_available()
    if cfg.quantization != "none" and not cuda:
        raise UserError(f"model.quantization = {cfg.quantization} needs a CUDA GPU (bitsandbytes k-bit layers), and "
                        "this machine has none. Set model.quantization: none to train LoRA on full-precision weights, "
                        "or run on a machine with a GPU.")
    if cfg.dtype == "bfloat16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("model.dtype = bfloat16, but this GPU does not support bf16. Set model.dtype: float16 "
                        "(or auto).")
    if cfg.dtype == "float16" and not cuda:
        raise UserError("model.dtype = float16 needs a CUDA GPU for mixed precision. Set model.dtype: auto or float32 "
                        "on this machine.")


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


def load_model(base_dir: str | Path, cfg: Model, task: str = "causal"):
    """The base model recorded in `base_dir`, for causal LM (`causal`) or as a one-output scorer (`reward`),
    quantized with bitsandbytes if model.quantization asks for it."""
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
    if task == "causal":
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, **kwargs)
    if model.config.pad_token_id is None:  # the reward head reads the last non-padding token
        model.config.pad_token_id = base.load_tokenizer(base_dir).pad_token_id
    if cfg.quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return model


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


def common_args(section: Training, cfg: Model, seed: int, checkpoints: str | Path, report_to: list[str]) -> dict:
    """TrainingArguments shared by every training stage: the params section plus what we pin for
    reproducibility, checkpointing and CPU runs."""
    return {
        **dataclasses.asdict(section),
        **precision_args(cfg),
        "output_dir": str(checkpoints),
        "seed": seed,
        "data_seed": seed,
        "save_strategy": "steps",
        "save_total_limit": 2,
        "eval_strategy": "steps",
        "per_device_eval_batch_size": section.per_device_train_batch_size,
        "report_to": report_to,
        "activation_checkpointing": False,  # TRL turns it on by default; it only costs time on small models
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
