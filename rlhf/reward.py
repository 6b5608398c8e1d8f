"""reward: a Bradley-Terry reward model, trained with TRL's RewardTrainer on (prompt, chosen, rejected).

The scorer is the base model with the SFT adapter merged in, a one-output sequence-classification head reading the
last non-padding token, and a new LoRA adapter (task type SEQ_CLS, which also trains the head)."""
from pathlib import Path

import torch

from rlhf import launch, models, resuming, scoring, tokenize, train
from rlhf.config import Params
from rlhf.io import provenance, write_json

STATS_FILE = models.REWARD_STATS_FILE


def pair_stats(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    """Accuracy (chosen scored above rejected; ties count as wrong), mean margin, and the score distribution that
    later stages normalize rewards with. Inputs: (N,) scores of the chosen and rejected sequences."""
    margin = chosen - rejected
    scores = torch.cat([chosen, rejected])
    return {
        "accuracy": round((margin > 0).float().mean().item(), 6),
        "mean_margin": round(margin.mean().item(), 6),
        "score_mean": round(scores.mean().item(), 6),
        "score_std": round(scores.std().item(), 6),
        "chosen_mean": round(chosen.mean().item(), 6),
        "rejected_mean": round(rejected.mean().item(), 6),
    }


def score_pairs(model, dataset, pad_id: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of prompt + chosen and prompt + rejected for every row of a tokenized split."""
    rows = dataset.map(tokenize.reward_columns)
    return (scoring.reward_scores(model, rows["chosen_ids"], pad_id, batch_size),
            scoring.reward_scores(model, rows["rejected_ids"], pad_id, batch_size))


def train_reward(params: Params, paths, out):
    """Train, save the adapter, head, tokenizer and validation stats to `out`; returns (metrics, settings the preset
    chose, model)."""
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    set_seed(params.seed)  # the new score head is initialized from the torch RNG
    section, lora, chosen = train.resolve(params, params.reward, train.accelerator_memory_gb())
    peft_config = train.lora_config(lora, "SEQ_CLS")
    chosen["modules_to_save"] = peft_config.modules_to_save  # a scorer trains its score head, never an lm_head copy
    print(f"reward: settings after compute.preset: {chosen}")

    # -- data: whole sequences (prompt included) for chosen and rejected
    train_rows = tokenize.load_split(paths.tokenized, "train", section.max_length)
    validation = tokenize.load_split(paths.tokenized, "validation", section.max_length)
    train_data = train_rows.map(tokenize.reward_columns, remove_columns=["id", "prompt_ids"])
    eval_data = validation.map(tokenize.reward_columns, remove_columns=["id", "prompt_ids"])

    # -- model and trainer
    tokenizer = models.tokenizer(paths.base)
    model = models.scorer(paths.base, paths.sft, params.model)
    report_to, callbacks = train.trackers(params.tracking, paths.reward_live)
    resume = resuming.resume_point(paths.reward_checkpoints, [paths.tokenized, paths.base, paths.sft],
                                   seed=params.seed, model=params.model, lora=lora, compute=params.compute,
                                   reward=section)
    args = RewardConfig(**train.common_args(section, params, paths.reward_checkpoints, report_to))
    trainer = RewardTrainer(model=model, args=args, train_dataset=train_data, eval_dataset=eval_data,
                            processing_class=tokenizer, peft_config=peft_config,
                            callbacks=callbacks)
    train.trainable_in_float32(trainer.model)

    # -- train, measure on validation, save
    wall = train.train(trainer, len(train_rows), resume)
    model = trainer.model.eval()
    stats = pair_stats(*score_pairs(model, validation, tokenizer.pad_token_id, section.per_device_train_batch_size))
    train.save_adapter(trainer, out)
    if launch.is_main_process():
        write_json(Path(out) / STATS_FILE, stats)
    metrics = {"train_loss": train.last_logged(trainer.state.log_history, "loss"), **stats,
               "tokens_seen": int(trainer.state.num_input_tokens_seen), "steps": trainer.state.global_step,
               "train_seconds": round(wall, 2)}
    return metrics, chosen, model


def run(params: Params, paths) -> None:
    """The reward stage: the adapter, score head, tokenizer, validation stats and reward.json (settings, provenance)
    in paths.reward, and paths.reward_metrics."""
    if launch.relaunch(params.compute, "stages.reward"):
        return
    with launch.stage_output(paths.reward) as tmp:
        metrics, settings, _ = train_reward(params, paths, tmp)
        if launch.is_main_process():
            write_json(tmp / "reward.json", {"settings": settings, **provenance(
                seed=params.seed, model=params.model, lora=params.lora, compute=params.compute, reward=params.reward)})
    if not launch.is_main_process():
        return
    write_json(paths.reward_metrics, {**metrics, **settings})
    print(f"reward: {metrics}")
    resuming.discard_checkpoints(paths.reward_checkpoints)  # only a run that died resumes
