"""On-policy DPO rounds (iterative DPO, as in Xu et al. 2023 "Some things are more CRINGE than others" and Xiong et
al. 2024): each round samples `samples_per_prompt` answers per prompt from the current policy, scores them with the
reward model (and any functions in `online_dpo.rewards`, added up as PPO's score: rlhf/rewards.py), pairs each
prompt's best answer against its worst (kept if the margin is at least `min_margin`), and trains DPO on those pairs
from the current policy. The LoRA adapter carries over from round to round; the reference is always the SFT model
(the adapter disabled), whose log-probs of each round's pairs are computed here.

One stage that loops, not a DVC `foreach`/`matrix` stage per round: round r trains from round r-1's policy, so a
change to any param reruns every round from the first either way, and per-round stages would only add a chain of
stages, fixed in dvc.yaml (not by `rounds`), that every other method carries too. What a user gets from per-round
stages is kept: each round's pairs and counts are in the align output (`rounds/<r>/pairs.jsonl`, `data.json`), and a
run killed mid-way keeps its finished rounds (adapter and pairs) under the align checkpoints, keyed by the resume
fingerprint, and resumes the round in progress from its last trainer checkpoint."""
import gc
import random
import shutil
import statistics
from pathlib import Path

import torch
from trl import DPOConfig

from rlhf import base, generation, models, resuming, scoring, tokenize, train
from rlhf.io import UserError, read_json, read_jsonl, write_json, write_jsonl
from rlhf.methods import dpo
from rlhf.rewards import functions as reward_functions, total_score

OURS = ("rounds", "samples_per_prompt", "prompts_per_round", "max_new_tokens", "temperature", "min_margin", "rewards")
DONE = "round.json"  # written last into a finished round's checkpoint folder: its metrics and training log


def distinct_prompts(prompt_ids: list[list[int]]) -> list[list[int]]:
    """Each training prompt once, in first-seen order (a prompt can have several pairs)."""
    seen, out = set(), []
    for ids in prompt_ids:
        if tuple(ids) not in seen:
            seen.add(tuple(ids))
            out.append(ids)
    return out


def round_prompts(count: int, per_round: int | None, seed: int, round_number: int) -> list[int]:
    """Indices of the prompts a round samples from: all, or a seeded draw, anew each round."""
    if per_round is None or per_round >= count:
        return list(range(count))
    return sorted(random.Random(seed * 1000 + round_number).sample(range(count), per_round))


def best_worst_pairs(rewards: torch.Tensor, min_margin: float) -> tuple[list[tuple[int, int, int]], int]:
    """Best-against-worst pairs from `rewards` (P, k): k sampled answers' rewards for each of P prompts. Returns
    ([(prompt, chosen answer, rejected answer)], how many prompts were dropped): a prompt gives the pair (argmax,
    argmin) if max - min >= min_margin and the two are different answers, else none."""
    pairs, dropped = [], 0
    for prompt, row in enumerate(rewards.tolist()):
        best, worst = max(range(len(row)), key=row.__getitem__), min(range(len(row)), key=row.__getitem__)
        if best != worst and row[best] - row[worst] >= min_margin:
            pairs.append((prompt, best, worst))
        else:
            dropped += 1
    return pairs, dropped


def sample_and_judge(policy, prompts, tokenizer, score, section, seed: int) -> tuple[list[list[list[int]]], torch.Tensor]:
    """k sampled answers per prompt from `policy` (P lists of k id lists) and their rewards (P, k). `score` is
    rewards.total_score's judge: (raw, reward) per answer."""
    k = section.samples_per_prompt
    repeated = [p for p in prompts for _ in range(k)]
    policy.eval()
    answers = generation.generate(policy, repeated, tokenizer, section.max_new_tokens, section.temperature, seed=seed)
    rewards = score(repeated, answers)[1]
    return [answers[i * k:(i + 1) * k] for i in range(len(prompts))], rewards.view(len(prompts), k)


def make_round(policy, prompts, indices, tokenizer, score, section, seed: int, round_number: int):
    """One round's pairs (rows for pairs.jsonl) and counts (data.json)."""
    chosen_prompts = [prompts[i] for i in indices]
    answers, rewards = sample_and_judge(policy, chosen_prompts, tokenizer, score, section, seed * 1000 + round_number)
    picked, dropped = best_worst_pairs(rewards, section.min_margin)
    text = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    rows = [{"id": f"round{round_number}-prompt{indices[p]}", "prompt": generation.prompt_text(chosen_prompts[p], tokenizer),
             "chosen": text(answers[p][c]), "rejected": text(answers[p][r]),
             "chosen_reward": round(rewards[p, c].item(), 6), "rejected_reward": round(rewards[p, r].item(), 6),
             "prompt_ids": chosen_prompts[p], "chosen_ids": answers[p][c], "rejected_ids": answers[p][r]}
            for p, c, r in picked]
    margins = [row["chosen_reward"] - row["rejected_reward"] for row in rows]
    mean = lambda values: round(statistics.mean(values), 6) if values else None  # noqa: E731
    data = {"round": round_number, "prompts": len(indices), "answers": rewards.numel(), "pairs": len(rows),
            "dropped_under_margin": dropped, "min_margin": section.min_margin, "mean_margin": mean(margins),
            "mean_reward": round(rewards.mean().item(), 6), "mean_chosen_reward": mean([r["chosen_reward"] for r in rows]),
            "mean_rejected_reward": mean([r["rejected_reward"] for r in rows])}
    return rows, data


def with_reference(policy, rows: list[dict], pad_id: int, batch_size: int):
    """The pairs as DPO rows (prompt_ids, chosen_ids, rejected_ids) with the SFT model's log-probs of each answer
    (the policy with its adapter disabled), as the reference stage computes them for the offline pairs."""
    from datasets import Dataset

    columns = {key: [row[key] for row in rows] for key in ("prompt_ids", "chosen_ids", "rejected_ids")}
    with models.reference(policy.eval()):
        for key, column in (("chosen_ids", "ref_chosen_logps"), ("rejected_ids", "ref_rejected_logps")):
            columns[column] = scoring.completion_logprobs(policy, columns["prompt_ids"], columns[key], pad_id,
                                                          batch_size)[0].tolist()
    return Dataset.from_dict(columns)


class SFTReferenceDPOTrainer(dpo.PretokenizedDPOTrainer):
    """Given a PeftModel and no ref_model, TRL 1.16's DPOTrainer copies the model's adapter into a frozen "ref"
    adapter, so from round 2 on the reference would be the last round's policy. Ours is the SFT model: the copy is
    dropped, and what TRL would compute as the reference is the adapter disabled (its `use_adapter(model, None)`).
    Our rows carry the SFT log-probs (`with_reference`), so TRL computes none itself."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "ref" in self.model.peft_config:
            self.model.delete_adapter("ref")


def check_length(prompts: list[list[int]], section) -> None:
    longest = max(len(p) for p in prompts)
    if longest + section.max_new_tokens > section.max_length:
        raise UserError(f"online_dpo: the longest training prompt ({longest} tokens) plus online_dpo.max_new_tokens "
                        f"({section.max_new_tokens}) exceeds online_dpo.max_length ({section.max_length}): DPO would "
                        "cut or drop pairs. Raise online_dpo.max_length or lower online_dpo.max_new_tokens.")


def current_policy(params, paths, lora, checkpoints: Path, round_number: int, policy):
    """The policy a round starts from: the one in memory, else the last round's saved adapter (a resumed run), else
    (round 1) the SFT model with a new adapter."""
    from peft import PeftModel, get_peft_model

    if policy is not None:
        return policy
    sft = models.sft_merged(paths.base, paths.sft, params.model)
    if round_number == 1:
        return get_peft_model(sft, train.lora_config(lora, "CAUSAL_LM"))
    return PeftModel.from_pretrained(sft, checkpoints / f"round-{round_number - 1}" / "adapter", is_trainable=True)


def round_pairs(policy, prompts, tokenizer, score, section, seed: int, round_number: int, folder: Path):
    """A round's pairs and counts, sampled and judged now, or read back from `folder` where a killed run left them
    (so that its trainer checkpoints resume on the same pairs)."""
    if (folder / "data.json").is_file():
        return read_jsonl(folder / "pairs.jsonl"), read_json(folder / "data.json")
    indices = round_prompts(len(prompts), section.prompts_per_round, seed, round_number)
    rows, data = make_round(policy, prompts, indices, tokenizer, score, section, seed, round_number)
    if not rows:
        raise UserError(f"online_dpo round {round_number} kept no pair: on every prompt the best and worst of "
                        f"{section.samples_per_prompt} answers were less than online_dpo.min_margin = "
                        f"{section.min_margin} apart. Lower min_margin, or raise samples_per_prompt or temperature.")
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "pairs.jsonl", rows)
    write_json(folder / "data.json", data)  # last: the pairs are complete
    return rows, data


def train_round(params, section, policy, rows, validation, tokenizer, report_to, callbacks, folder: Path):
    """DPO on one round's pairs from `policy`; the adapter saved to folder/adapter. Returns (metrics, log, policy)."""
    train_rows = with_reference(policy, rows, tokenizer.pad_token_id, section.per_device_train_batch_size)
    loss_type = [section.loss_type] if isinstance(section.loss_type, str) else section.loss_type
    fields = train.common_args(section, params, folder / "trainer", report_to) | {
        "loss_type": loss_type, "precompute_ref_log_probs": True}
    trainer = SFTReferenceDPOTrainer(
        model=policy, args=DPOConfig(**{k: v for k, v in fields.items() if k not in OURS}), train_dataset=train_rows,
        eval_dataset=validation, processing_class=tokenizer, callbacks=callbacks, ref_model=None)
    train.trainable_in_float32(trainer.model)
    Path(folder / "trainer").mkdir(parents=True, exist_ok=True)
    metrics = train.fit(trainer, folder / "adapter", len(train_rows), resuming.newest_complete(folder / "trainer"))
    log, policy = trainer.state.log_history, trainer.model
    del trainer
    gc.collect()
    return metrics, log, policy


def replay(callbacks, log: list[dict]) -> None:
    """A finished round's logged metrics into the DVCLive curves of a resumed run, which skips that round, each at its
    optimizer step (after the earlier rounds' steps, the callbacks' offset)."""
    from dvclive.utils import standardize_metric_name

    for callback in callbacks:
        for entry in log:
            callback.live.step = entry.get("step", 0) + callback.offset
            for key, value in entry.items():
                if isinstance(value, (int, float)):
                    callback.live.log_metric(standardize_metric_name(key, "dvclive.huggingface"), value)
            callback.live.next_step()


def run(params, paths, out):
    section = train.start_method(params)
    _, lora, chosen = train.resolve(params, params.online_dpo, train.accelerator_memory_gb())
    tokenizer = models.tokenizer(paths.base)
    # -- data: the training prompts (answers come from the policy), the offline validation pairs for eval_loss
    prompts = distinct_prompts(tokenize.load_split(paths.tokenized, "train", 10**9)["prompt_ids"])
    check_length(prompts, section)
    validation = dpo.rows_with_reference(paths.tokenized, paths.reference, "validation", section.max_length)
    # -- the judge: the trained reward model (an ensemble combined by rewards.aggregate), plus any reward functions
    scorer, stats = models.reward_model(paths.base, paths.sft, paths.reward, params.model)
    score = total_score(scoring.reward_function(scorer, stats, tokenizer, base.end_of_turn(tokenizer),
                                                section.per_device_train_batch_size),
                        section.rewards, reward_functions(section.rewards, "online_dpo", tokenizer, params.data.source,
                                                          section.max_new_tokens), tokenizer)
    # -- rounds: finished ones are kept under the checkpoints (keyed by the resume fingerprint) and not redone
    report_to, callbacks = train.trackers(params.tracking, paths.align_live)
    checkpoints = Path(paths.align_checkpoints)
    resuming.resume_point(checkpoints, train.align_inputs(paths), **resuming.align_sections(params, params.method))
    policy, rounds, last, steps_before = None, {}, {}, 0
    for r in range(1, section.rounds + 1):
        folder = checkpoints / f"round-{r}"
        for callback in callbacks:  # the curves go on across rounds, at the optimizer steps of all rounds so far
            callback.offset = steps_before
        if (folder / DONE).is_file():
            print(f"online_dpo: round {r} finished before; kept from {folder}")
            done = read_json(folder / DONE)
            replay(callbacks, done["log"])
        else:
            policy = current_policy(params, paths, lora, checkpoints, r, policy)
            rows, data = round_pairs(policy, prompts, tokenizer, score, section, params.seed, r, folder)
            metrics, log, policy = train_round(params, section, policy, rows, validation, tokenizer, report_to,
                                               callbacks, folder)
            done = {"data": data, "metrics": metrics, "log": log}
            write_json(folder / DONE, done)
            print(f"online_dpo: round {r}: {data}")
        rounds[str(r)] = {**done["data"], "steps": done["metrics"]["steps"], "loss": done["metrics"].get("loss")}
        last = done["metrics"]
        steps_before += last["steps"]
    # -- the output: the last round's adapter, and every round's pairs and counts
    policy = current_policy(params, paths, lora, checkpoints, section.rounds + 1, policy)
    for f in (checkpoints / f"round-{section.rounds}" / "adapter").iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    for r in rounds:
        (out / "rounds" / r).mkdir(parents=True)
        for name in ("pairs.jsonl", "data.json"):
            shutil.copy2(checkpoints / f"round-{r}" / name, out / "rounds" / r / name)
    totals = {k: round(sum(read_json(checkpoints / f"round-{r}" / DONE)["metrics"][k] for r in rounds), 2)
              for k in ("steps", "train_seconds")}
    return {**last, **totals, "rounds": rounds, **chosen}, policy
