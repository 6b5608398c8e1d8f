"""sft: supervised fine-tuning on prompt + chosen, loss on the completion only, LoRA (or QLoRA) through PEFT, with
TRL's SFTTrainer as configured by the `sft` and `lora` sections."""
import math

from rlhf import models, resuming, scoring, tokenize, train
from rlhf.config import Params


def run_sft(params: Params, tokenized: str, base_dir: str, out: str, checkpoints: str, live_dir: str):
    """Train, save the adapter and tokenizer to `out`; returns (metrics, settings the preset chose, model)."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(params.seed)
    section, lora, chosen = train.resolve(params, params.sft, train.accelerator_memory_gb())
    print(f"sft: settings after compute.preset: {chosen}")

    # -- data: the tokenize stage's rows, exactly; prompt + chosen with a completion mask
    columns = ["id", "prompt_ids", "chosen_ids", "rejected_ids"]
    train_rows = tokenize.load_split(tokenized, "train", section.max_length)
    validation = tokenize.load_split(tokenized, "validation", section.max_length)
    train_data = train_rows.map(tokenize.sft_columns, remove_columns=columns)
    eval_data = validation.map(tokenize.sft_columns, remove_columns=columns)

    # -- model and trainer
    tokenizer = models.tokenizer(base_dir)
    model = models.base_model(base_dir, params.model)
    report_to, callbacks = train.trackers(params.tracking, live_dir)
    resume = resuming.resume_point(checkpoints, [tokenized, base_dir], seed=params.seed, model=params.model, lora=lora,
                                   compute=params.compute, sft=section)
    args = SFTConfig(**train.common_args(section, params, checkpoints, report_to),
                     completion_only_loss=True, packing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_data, eval_dataset=eval_data,
                         processing_class=tokenizer, peft_config=train.lora_config(lora, "CAUSAL_LM"),
                         callbacks=callbacks)
    train.trainable_in_float32(trainer.model)
    if len(trainer.train_dataset) != len(train_rows):
        raise RuntimeError(f"SFTTrainer kept {len(trainer.train_dataset)} of {len(train_rows)} rows")

    # -- train, measure, save
    wall = resuming.train_resumable(trainer, resume)
    model = trainer.model.eval()
    nll, count = scoring.completion_logprobs(model, validation["prompt_ids"], validation["chosen_ids"],
                                             tokenizer.pad_token_id, section.per_device_train_batch_size)
    eval_loss = -nll.sum().item() / count.sum().item()
    trainer.save_model(out)
    metrics = {
        "train_loss": train.last_logged(trainer.state.log_history, "loss"),
        "eval_loss": round(eval_loss, 6),
        "eval_perplexity": round(math.exp(eval_loss), 6),
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "steps": trainer.state.global_step,
        "train_seconds": round(wall, 2),  # wall time: the one value that differs between identical runs
    }
    return metrics, chosen, model
