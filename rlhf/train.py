"""What every training stage shares: the memory preset, hardware checks, model loading with LoRA / QLoRA, the
tokenized data with its row check, and tracking (DVCLive always, Weights & Biases as an option)."""
import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from rlhf import base, tokenize
from rlhf.config import Lora, Model, Params, Training
from rlhf.io import UserError, read_json, write_json

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

    try:
        return Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
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
        "include_num_input_tokens_seen": "all",
        "disable_tqdm": False,
    }


# -- checkpoints and resuming ----------------------------------------------------------------------------------------
# Checkpoints live outside the stage's DVC outputs (DVC deletes those before a stage runs) and exist only to resume a
# run that died. The Trainer's own get_last_checkpoint takes the highest-numbered folder even if the crash came while
# it was being written, so a marker is written into each folder last, and only marked folders are resumed from.
COMPLETE = "complete.json"  # written last into a checkpoint folder
RUN_FILE = "run.json"  # what the checkpoints in a folder were trained with: a resume never mixes two configurations


def is_main_process() -> bool:
    """True in the one process that writes outputs (rank 0), or when not launched as several processes."""
    return int(os.environ.get("RANK", "0")) == 0


def fingerprint(inputs: list, **sections) -> str:
    """sha256 of what a training run depends on: its params sections, the content of its input folders, the rlhf
    package's code and the library versions. Checkpoints written under another fingerprint are never resumed from."""
    import hashlib

    import rlhf
    from rlhf.io import _plain, provenance

    digest = hashlib.sha256(json.dumps({"params": sections, "versions": provenance()["versions"]}, sort_keys=True,
                                       default=_plain).encode())
    code = sorted(Path(rlhf.__file__).parent.rglob("*.py"))
    files = [f for folder in inputs for f in sorted(Path(folder).rglob("*")) if f.is_file()]
    for f in code + files:
        digest.update(f.name.encode())
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def complete_checkpoints(folder: str | Path, prefix: str = "checkpoint-") -> list[Path]:
    """The checkpoint folders under `folder` that hold the completion marker, oldest step first."""
    marked = [p.parent for p in Path(folder).glob(f"{prefix}*/{COMPLETE}")]
    return sorted(marked, key=lambda p: int(p.name[len(prefix):]))


def finished(checkpoint: Path) -> bool:
    """Whether a Trainer checkpoint is the last step of its run. Resumed from there, transformers 5.23 takes one step
    too many (a run of 2 steps ends at step 3), so the checkpoint before it is resumed from instead."""
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return False
    state = read_json(state)
    return state["global_step"] >= state["max_steps"]


def resume_point(checkpoints: str | Path, inputs: list, prefix: str = "checkpoint-", **sections) -> str | None:
    """Prepare the checkpoint folder for a run of these params and inputs; return the newest complete checkpoint to
    resume from, or None to start over. Checkpoints of another configuration and half-written ones are deleted
    (by the main process; the others only read)."""
    checkpoints = Path(checkpoints)
    key = fingerprint(inputs, **sections)
    run_file = checkpoints / RUN_FILE
    same_run = run_file.is_file() and read_json(run_file).get("fingerprint") == key
    found = [c for c in complete_checkpoints(checkpoints, prefix) if not finished(c)] if same_run else []
    if is_main_process():
        if not same_run:
            if checkpoints.exists():
                print(f"checkpoints: discarding {checkpoints} (written with other params, inputs or code)")
            shutil.rmtree(checkpoints, ignore_errors=True)
            checkpoints.mkdir(parents=True)
            write_json(run_file, {"fingerprint": key})
        for folder in checkpoints.glob(f"{prefix}*"):
            if folder.is_dir() and folder not in found:
                shutil.rmtree(folder)  # half-written by a run that died while saving
    if found:
        print(f"checkpoints: resuming from {found[-1]}")
        return str(found[-1])
    return None


def align_sections(params, method: str) -> dict:
    """The params a run of an align method's checkpoints depend on (those the align stage declares in dvc.yaml)."""
    return {"seed": params.seed, "method": method, "source": params.data.source, "model": params.model,
            "lora": params.lora, "compute": params.compute, "align": params.align, method: getattr(params, method)}


def prune_checkpoints(checkpoints: str | Path, prefix: str, keep: int = 2) -> None:
    """Delete all but the newest `keep` complete checkpoints (what save_total_limit does for the Trainer)."""
    for folder in complete_checkpoints(checkpoints, prefix)[:-keep]:
        shutil.rmtree(folder)


def discard_checkpoints(checkpoints: str | Path) -> None:
    """Delete a finished run's checkpoints: its outputs are in the DVC cache now, and a forced rerun must train anew."""
    if is_main_process():
        shutil.rmtree(checkpoints, ignore_errors=True)


def mark_complete(folder: str | Path, step: int) -> None:
    write_json(Path(folder) / COMPLETE, {"step": step})


def checkpoint_callback(replay_to: list):
    """A TrainerCallback that marks each checkpoint complete once the Trainer has written all of it (weights,
    optimizer, scheduler, RNG states, trainer state), and, on a resumed run, replays the resumed state's log history
    into `replay_to` (DVCLive callbacks), so the curves show the whole run and not just its second half."""
    from accelerate import PartialState
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.global_step > 0:
                for callback in replay_to:
                    for entry in state.log_history:
                        callback.on_log(args, state, control, logs=dict(entry))

        def on_save(self, args, state, control, **kwargs):
            PartialState().wait_for_everyone()  # every process has written its part (e.g. its RNG state)
            if state.is_world_process_zero:
                mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)

    return CheckpointMarker()


def train_resumable(trainer, resume: str | None) -> float:
    """trainer.train(), from `resume` if given, with each checkpoint marked complete; returns the wall seconds."""
    import time

    from transformers.integrations import DVCLiveCallback

    live = [c for c in trainer.callback_handler.callbacks if isinstance(c, DVCLiveCallback)]
    trainer.add_callback(checkpoint_callback(live))
    start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    return time.time() - start


def last_logged(log_history: list[dict], key: str) -> float | None:
    values = [entry[key] for entry in log_history if key in entry]
    return values[-1] if values else None


def fit(trainer, out: str | Path, expected_rows: int, resume: str | None = None) -> dict:
    """Train (from `resume` if given), evaluate and save the adapter and tokenizer to `out`; returns the last logged
    value of every training metric, the evaluation metrics, steps and wall time. Refuses to train if the trainer
    dropped any row."""
    if len(trainer.train_dataset) != expected_rows:
        raise RuntimeError(f"the trainer kept {len(trainer.train_dataset)} of {expected_rows} training rows")
    wall = train_resumable(trainer, resume)
    evaluation = trainer.evaluate() if trainer.eval_dataset is not None else {}
    trainer.save_model(str(out))
    logged = {}
    for entry in trainer.state.log_history:
        if "train_runtime" in entry:  # the Trainer's summary: after a resume it covers only the resumed part
            continue
        logged.update({k: v for k, v in entry.items() if "eval_" not in k})
    metrics = {**logged, **evaluation}
    # eval_num_tokens counts what this trainer object evaluated, so it differs after a resume: not a result
    noise = ("runtime", "per_second", "epoch", "total_flos", "learning_rate", "step", "eval_num_tokens")
    metrics = {k.replace("/", "_"): round(float(v), 6) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not any(n in k for n in noise)}
    return {**metrics, "steps": trainer.state.global_step, "train_seconds": round(wall, 2)}
