"""reward: a Bradley-Terry reward model, or an ensemble of them, trained with TRL's RewardTrainer on (prompt, chosen,
rejected).

The scorer is the base model with the SFT adapter merged in, a one-output sequence-classification head reading the
last non-padding token, and a new LoRA adapter (task type SEQ_CLS, which also trains the head). An ensemble
(`reward.ensemble.members` > 1) is that many adapters, each with its own head, trained one after the other with seeds
seed + i and, with `reward.ensemble.bootstrap`, on their own resamples of the pairs: independent members (Coste et
al. 2023), which later stages load on one scorer (models.reward_model). k heads on one shared trunk would score in one
forward pass instead of k, but their members would share every feature and hardly disagree (bench/reward_ensemble.py
measures the cost of k adapters)."""
import dataclasses
import shutil
from pathlib import Path

import torch

from rlhf import launch, models, resuming, scoring, tokenize, train
from rlhf.config import Params
from rlhf.io import provenance, read_json, write_json

STATS_FILE = models.REWARD_STATS_FILE
FINISHED = "finished"  # in a member's checkpoint folder: its output, once trained, until the whole stage has ended


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


def bootstrap_rows(count: int, seed: int) -> list[int]:
    """A seeded bootstrap resample of `count` rows: `count` indices drawn with replacement (about 63% distinct)."""
    return torch.randint(count, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def member_rows(train_rows, ensemble, member: int, seed: int):
    """Member `member`'s training rows: all of them for a single model or without bootstrap, else its own resample
    (Coste et al. 2023 train their members on the same data, seeds apart; a resample makes them disagree more where
    the data is thin, which is what the ensemble's std should show)."""
    if ensemble.members == 1 or not ensemble.bootstrap:
        return train_rows
    return train_rows.select(bootstrap_rows(len(train_rows), seed))


def train_member(params: Params, paths, out, member: int, checkpoints: Path, resume: str | None):
    """Train ensemble member `member` (seed params.seed + member; member 0 of a single model is exactly the reward
    model of a run without ensembles), save its adapter, score head, tokenizer and validation stats to `out`.
    Returns (metrics, settings the preset chose, (chosen, rejected) validation scores)."""
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    ensemble = params.reward.ensemble
    params = dataclasses.replace(params, seed=params.seed + member)
    set_seed(params.seed)  # the new score head is initialized from the torch RNG
    section, lora, chosen = train.resolve(params, params.reward, train.accelerator_memory_gb())
    peft_config = train.lora_config(lora, "SEQ_CLS")
    chosen["modules_to_save"] = peft_config.modules_to_save  # a scorer trains its score head, never an lm_head copy
    print(f"reward: member {member}, settings after compute.preset: {chosen}")

    # -- data: whole sequences (prompt included) for chosen and rejected
    train_rows = tokenize.load_split(paths.tokenized, "train", section.max_length)
    validation = tokenize.load_split(paths.tokenized, "validation", section.max_length)
    train_data = member_rows(train_rows, ensemble, member, params.seed).map(
        tokenize.reward_columns, remove_columns=["id", "prompt_ids"])
    eval_data = validation.map(tokenize.reward_columns, remove_columns=["id", "prompt_ids"])

    # -- model and trainer; curves of member 0 only (one set of plots in dvc.yaml)
    tokenizer = models.tokenizer(paths.base)
    model = models.scorer(paths.base, paths.sft, params.model)
    report_to, callbacks = train.trackers(params.tracking, paths.reward_live) if member == 0 else ([], [])
    fields = train.common_args(section, params, checkpoints, report_to)
    args = RewardConfig(**{k: v for k, v in fields.items() if k != "ensemble"})
    trainer = RewardTrainer(model=model, args=args, train_dataset=train_data, eval_dataset=eval_data,
                            processing_class=tokenizer, peft_config=peft_config,
                            callbacks=callbacks)
    train.trainable_in_float32(trainer.model)

    # -- train, measure on validation, save
    wall = train.train(trainer, len(train_data), resume)
    scores = score_pairs(trainer.model.eval(), validation, tokenizer.pad_token_id, section.per_device_train_batch_size)
    stats = pair_stats(*scores)
    train.save_adapter(trainer, out)
    if launch.is_main_process():
        write_json(Path(out) / STATS_FILE, stats)
    metrics = {"train_loss": train.last_logged(trainer.state.log_history, "loss"), **stats,
               "tokens_seen": int(trainer.state.num_input_tokens_seen), "steps": trainer.state.global_step,
               "train_seconds": round(wall, 2)}
    return metrics, chosen, scores


def member_name(member: int) -> str:
    """The member's adapter name, and its folder in the reward stage's output and checkpoints."""
    return f"member-{member}"


def fit_member(params: Params, paths, out: Path, member: int) -> dict:
    """Member `member` in `out`: trained (resumed from its checkpoints if a run of the same configuration died in
    it), or, if such a run finished it before dying in a later member, copied from its checkpoint folder without
    training. Returns {"metrics", "settings", "chosen", "rejected"} (validation scores)."""
    checkpoints = Path(paths.reward_checkpoints) / member_name(member)
    section, lora, _ = train.resolve(params, params.reward, train.accelerator_memory_gb())
    resume = resuming.resume_point(checkpoints, [paths.tokenized, paths.base, paths.sft], seed=params.seed,
                                   model=params.model, lora=lora, compute=params.compute, reward=section, member=member)
    done = checkpoints / FINISHED
    if (done / resuming.COMPLETE).is_file():
        print(f"reward: member {member} was finished by a run that died later: taken from {done}")
        if launch.is_main_process():
            shutil.copytree(done / "adapter", out)
            if (done / "live").is_dir():
                shutil.copytree(done / "live", paths.reward_live, dirs_exist_ok=True)
        return read_json(done / "member.json")
    metrics, settings, (chosen, rejected) = train_member(params, paths, out, member, checkpoints, resume)
    result = {"metrics": metrics, "settings": settings, "chosen": chosen.tolist(), "rejected": rejected.tolist()}
    if launch.is_main_process():  # keep the finished member until the stage ends; its Trainer checkpoints can go
        for folder in checkpoints.glob("checkpoint-*"):
            shutil.rmtree(folder)
        shutil.copytree(out, done / "adapter")
        if member == 0 and Path(paths.reward_live).is_dir():
            shutil.copytree(paths.reward_live, done / "live")
        write_json(done / "member.json", result)
        resuming.mark_complete(done, metrics["steps"])
    return result


def ensemble_metrics(members: list[dict]) -> dict:
    """metrics/reward.json's numbers: member 0's (a single model's, as before ensembles), the training time of all
    members, each member's validation accuracy and the ensemble's: the accuracy of the members' mean normalized
    score (scoring.ensemble_scores, what the later stages score with)."""
    stats = [m["metrics"] for m in members]
    chosen, rejected = (scoring.ensemble_scores(torch.tensor([m[key] for m in members]).T, stats).normalized
                        for key in ("chosen", "rejected"))
    return {**stats[0], "train_seconds": round(sum(s["train_seconds"] for s in stats), 2),
            "ensemble_accuracy": pair_stats(chosen, rejected)["accuracy"],
            **{f"member_{i}_accuracy": s["accuracy"] for i, s in enumerate(stats)}}


def run(params: Params, paths) -> None:
    """The reward stage: in paths.reward, one folder per ensemble member (adapter, score head, tokenizer, validation
    stats), ensemble.json (the members, the ensemble's accuracy) and reward.json (settings, provenance); and
    paths.reward_metrics."""
    if launch.relaunch(params.compute, "stages.reward"):
        return
    ensemble = params.reward.ensemble
    with launch.stage_output(paths.reward) as tmp:
        members = [fit_member(params, paths, tmp / member_name(i), i) for i in range(ensemble.members)]
        metrics, settings = ensemble_metrics(members), members[0]["settings"]
        if launch.is_main_process():
            write_json(tmp / models.REWARD_ENSEMBLE_FILE, {
                "members": [member_name(i) for i in range(ensemble.members)], "bootstrap": ensemble.bootstrap,
                "seeds": [params.seed + i for i in range(ensemble.members)], "accuracy": metrics["ensemble_accuracy"]})
            write_json(tmp / "reward.json", {"settings": settings, **provenance(
                seed=params.seed, model=params.model, lora=params.lora, compute=params.compute, reward=params.reward)})
    if not launch.is_main_process():
        return
    write_json(paths.reward_metrics, {**metrics, **settings})
    print(f"reward: {metrics}")
    resuming.discard_checkpoints(paths.reward_checkpoints)  # only a run that died resumes
