"""sft: supervised fine-tuning on prompt + chosen, loss on the completion only, LoRA (or QLoRA) through PEFT, with
TRL's SFTTrainer as configured by the `sft` and `lora` sections."""
import math

from rlhf import launch, models, resuming, scoring, tokenize, train
from rlhf.config import Params
from rlhf.io import provenance, write_json


def train_sft(params: Params, paths, out):
    """Train, save the adapter and tokenizer to `out`; returns (metrics, settings the preset chose, model)."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(params.seed)
    section, lora, chosen = train.resolve(params, params.sft, train.accelerator_memory_gb())
    print(f"sft: settings after compute.preset: {chosen}")

    # -- data: the tokenize stage's rows, exactly; prompt + chosen with a completion mask
    columns = ["id", "prompt_ids", "chosen_ids", "rejected_ids"]
    train_rows = tokenize.load_split(paths.tokenized, "train", section.max_length)
    validation = tokenize.load_split(paths.tokenized, "validation", section.max_length)
    train_data = train_rows.map(tokenize.sft_columns, remove_columns=columns)
    eval_data = validation.map(tokenize.sft_columns, remove_columns=columns)

    # -- model and trainer
    tokenizer = models.tokenizer(paths.base)
    model = models.base_model(paths.base, params.model)
    report_to, callbacks = train.trackers(params.tracking, paths.sft_live)
    resume = resuming.resume_point(paths.sft_checkpoints, [paths.tokenized, paths.base], seed=params.seed,
                                   model=params.model, lora=lora, compute=params.compute, sft=section)
    args = SFTConfig(**train.common_args(section, params, paths.sft_checkpoints, report_to),
                     completion_only_loss=True, packing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_data, eval_dataset=eval_data,
                         processing_class=tokenizer, peft_config=train.lora_config(lora, "CAUSAL_LM"),
                         callbacks=callbacks)
    train.trainable_in_float32(trainer.model)

    # -- train, measure, save
    wall = train.train(trainer, len(train_rows), resume)
    model = trainer.model.eval()
    nll, count = scoring.completion_logprobs(model, validation["prompt_ids"], validation["chosen_ids"],
                                             tokenizer.pad_token_id, section.per_device_train_batch_size)
    eval_loss = -nll.sum().item() / count.sum().item()
    train.save_adapter(trainer, out)
    metrics = {
        "train_loss": train.last_logged(trainer.state.log_history, "loss"),
        "eval_loss": round(eval_loss, 6),
        "eval_perplexity": round(math.exp(eval_loss), 6),
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "steps": trainer.state.global_step,
        "train_seconds": round(wall, 2),  # wall time: the one value that differs between identical runs
    }
    return metrics, chosen, model


def run(params: Params, paths) -> None:
    """The sft stage: the adapter, tokenizer and sft.json (settings, provenance) in paths.sft, and
    paths.sft_metrics."""
    if launch.relaunch(params.compute, "stages.sft"):
        return
    with launch.stage_output(paths.sft) as tmp:
        metrics, settings, _ = train_sft(params, paths, tmp)
        if launch.is_main_process():
            write_json(tmp / "sft.json", {"settings": settings, **provenance(
                seed=params.seed, model=params.model, lora=params.lora, compute=params.compute, sft=params.sft)})
    if not launch.is_main_process():
        return
    write_json(paths.sft_metrics, {**metrics, **settings})
    print(f"sft: {metrics}")
    resuming.discard_checkpoints(paths.sft_checkpoints)  # only a run that died resumes
