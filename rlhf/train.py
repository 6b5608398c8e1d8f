"""What every training stage shares: the memory preset, LoRA / QLoRA settings, precision, and tracking (DVCLive
always, Weights & Biases as an option). Models and data come from rlhf/models.py and rlhf/tokenize.py."""
import dataclasses
import os
from pathlib import Path

import torch

from rlhf import launch, models, resuming
from rlhf.config import Lora, Model, Params, Training

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
    return {"dtype": str(models.torch_dtype(params.model)).removeprefix("torch."), "quantization": params.model.quantization,
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


def precision_args(cfg: Model) -> dict:
    """TrainingArguments for mixed precision (TRL's configs default bf16 on: set it explicitly)."""
    dtype = models.torch_dtype(cfg)
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16, "use_cpu": not torch.cuda.is_available()}


def sort_target_modules(folder: str | Path) -> None:
    """Sort `target_modules` in every adapter_config.json under `folder`. PEFT writes the modules that `all-linear`
    resolves to from a set, in an order that changes from process to process (string hashing), so identical adapters
    would get different DVC hashes and a rerun would not reproduce the output byte for byte."""
    import json

    for path in Path(folder).rglob("adapter_config.json"):
        adapter = json.loads(path.read_text())
        if isinstance(adapter.get("target_modules"), list):
            adapter["target_modules"] = sorted(adapter["target_modules"])
            path.write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n")


def save_adapter(trainer, out: str | Path) -> None:
    """The trainer's adapter (and tokenizer) in `out`, byte for byte the same for the same training."""
    trainer.save_model(str(out))
    if launch.is_main_process():
        sort_target_modules(out)


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


def step_callback(live):
    """transformers' DVCLiveCallback, writing each point at the trainer's optimizer step (`global_step`). The stock
    callback writes DVCLive's own counter, one per log call (0 to 22 for an ORPO run of 171 steps, and eval points
    counted in), so curves of methods with other logging or eval intervals did not share an x axis. A replayed log
    history entry (rlhf.resuming) carries its own `step`."""
    from transformers.integrations import DVCLiveCallback

    class OptimizerStepDVCLiveCallback(DVCLiveCallback):
        offset = 0  # optimizer steps taken before this trainer's first (online_dpo's earlier rounds)

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            logs = dict(logs or {})
            self.live.step = logs.pop("step", state.global_step) + self.offset
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    return OptimizerStepDVCLiveCallback(live=live)


def trackers(tracking, live_dir: str | Path) -> tuple[list[str], list]:
    """(report_to, callbacks): DVCLive into `live_dir`, plus offline-capable wandb when tracking.wandb is on.
    A missing or unreachable backend never stops a run."""
    live = open_live(live_dir)
    callbacks = [step_callback(live)] if live is not None else []
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
        # TRL's configs default it on; set it from params for every model, k-bit or not (models.base_model leaves it off)
        "activation_checkpointing": params.compute.activation_checkpointing,
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": "non_padding",  # real tokens, summed over all processes
        "disable_tqdm": False,
    }


def last_logged(log_history: list[dict], key: str) -> float | None:
    values = [entry[key] for entry in log_history if key in entry]
    return values[-1] if values else None


def train(trainer, expected_rows: int, resume: str | None = None) -> float:
    """Train (from `resume` if given); returns the wall time. Refuses to train if the trainer dropped any row."""
    if len(trainer.train_dataset) != expected_rows:
        raise RuntimeError(f"the trainer kept {len(trainer.train_dataset)} of {expected_rows} training rows")
    return resuming.train_resumable(trainer, resume)


def fit(trainer, out: str | Path, expected_rows: int, resume: str | None = None) -> dict:
    """Train (see `train`), evaluate and save the adapter and tokenizer to `out`; returns the last logged value of
    every training metric, the evaluation metrics, steps and wall time."""
    wall = train(trainer, expected_rows, resume)
    evaluation = trainer.evaluate() if trainer.eval_dataset is not None else {}
    save_adapter(trainer, out)
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


def align_inputs(paths) -> list:
    """The folders an align run reads: a checkpoint resumes only a run on the same ones."""
    return [paths.tokenized, paths.base, paths.sft, paths.reward, paths.reference]


def fit_method(params, paths, out, trainer_class, config_class, train_rows, validation, model, *,
               config: dict | None = None, drop: tuple = (), **trainer_kwargs) -> tuple[dict, object]:
    """The align stage's run of a method built on a TRL trainer: the method's params section (with the preset's
    choices) and `config` as `config_class`, a new LoRA adapter on `model`, tracking, resuming, the row check, and
    the adapter saved to `out`. `drop` names section keys that are ours, not the config class's. Returns (metrics
    with the preset's choices, the trained model)."""
    section, lora, chosen = resolve(params, getattr(params, params.method), accelerator_memory_gb())
    report_to, callbacks = trackers(params.tracking, paths.align_live)
    resume = resuming.resume_point(paths.align_checkpoints, align_inputs(paths),
                                   **resuming.align_sections(params, params.method))
    fields = common_args(section, params, paths.align_checkpoints, report_to) | (config or {})
    trainer = trainer_class(
        model=model, args=config_class(**{k: v for k, v in fields.items() if k not in drop}), train_dataset=train_rows,
        eval_dataset=validation, processing_class=models.tokenizer(paths.base),
        peft_config=lora_config(lora, "CAUSAL_LM"), callbacks=callbacks, **trainer_kwargs)
    trainable_in_float32(trainer.model)
    metrics = fit(trainer, out, len(train_rows), resume)
    return {**metrics, **chosen}, trainer.model


def start_method(params):
    """Seed, and the method's params section with the preset's choices filled in (printed)."""
    from transformers import set_seed

    set_seed(params.seed)
    section, _, chosen = resolve(params, getattr(params, params.method), accelerator_memory_gb())
    print(f"{params.method}: settings after compute.preset: {chosen}")
    return section
