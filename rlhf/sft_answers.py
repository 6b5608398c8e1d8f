"""sft_answers: the SFT model's side of the evaluation, computed once per SFT model and `eval.*` settings, not once per
experiment: its answers to the evaluation prompts (sampled with `seed`), their reward-model scores and, on a built-in
task, oracle scores, its log-probs of those answers (for the fluency measure) and of the validation pairs' chosen and
rejected answers.

The policy's side is the same measurement (`measure`), made by the evaluate stage. Generation reseeds at each call
and every batch holds one model's rows only, so a side does not depend on what else ran in the process: the cached
side equals the one evaluate would compute itself. The KL to SFT is not here: it needs the SFT model's log-probs of
the policy's answers.
"""
from pathlib import Path

import torch

from rlhf import base, generation, models, scoring, tokenize
from rlhf.io import UserError, atomic_dir, provenance, write_json

PAIRS = ("chosen", "rejected")


def shared_inputs(params, paths) -> dict:
    """What both models are measured on: the validation split, the prompts they answer, the reward-model scorer (an
    ensemble's: every member) and its members' stats, the built-in task (None on real data, which has no oracle) and
    the tokenizer."""
    tokenizer, batch = models.tokenizer(paths.base), params.eval.batch_size
    validation = tokenize.load_split(paths.tokenized, "validation", 10**9)
    rm, stats = models.reward_model(paths.base, paths.sft, paths.reward, params.model)
    return {"validation": validation, "prompts": validation["prompt_ids"][: params.eval.num_prompts],
            "score": scoring.reward_function(rm, stats, tokenizer, base.end_of_turn(tokenizer), batch),
            "rm_stats": stats,
            "task": generation.builtin_task(params.data.source), "tokenizer": tokenizer}


def measure(model, params, shared: dict) -> dict:
    """One model's side: "answers" (token ids per prompt), "rm" and, on a built-in task, "oracle" ((N,) scores of
    the answers; "rm" the reward model's raw score, an ensemble's mean), "rm_std" ((N,) the ensemble members'
    disagreement, in normalized units: 0 for a single reward model), "answer_logps" ((N,) summed log-probs and (N,)
    token counts of the answers under the model itself), and "chosen", "rejected" ((M,) summed log-probs and (M,)
    token counts of the validation pairs)."""
    cfg, tokenizer, prompts, validation = params.eval, shared["tokenizer"], shared["prompts"], shared["validation"]
    answers = generation.generate(model, prompts, tokenizer, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                  cfg.batch_size, seed=params.seed)
    scores = shared["score"](prompts, answers)
    side = {"answers": answers, "rm": scores.raw, "rm_std": scores.std}
    if shared["task"]:
        side["oracle"] = torch.tensor(generation.oracle_scores(shared["task"], prompts, answers, tokenizer))
    side["answer_logps"] = scoring.completion_logprobs(model, prompts, answers, tokenizer.pad_token_id, cfg.batch_size)
    for key in PAIRS:
        side[key] = scoring.completion_logprobs(model, validation["prompt_ids"], validation[f"{key}_ids"],
                                                tokenizer.pad_token_id, cfg.batch_size)
    return side


def compute(params, paths):
    """The SFT model's side, as datasets to save: "answers" (one row per prompt answered) and "pairs" (one row per
    validation pair), each with the validation rows' ids."""
    from datasets import Dataset, DatasetDict

    shared = shared_inputs(params, paths)
    side = measure(models.sft_merged(paths.base, paths.sft, params.model).eval(), params, shared)
    ids = list(shared["validation"]["id"])
    answers = {"id": ids[: len(side["answers"])], "answer_ids": side["answers"], "rm_score": side["rm"].tolist(),
               "rm_std": side["rm_std"].tolist()}
    if "oracle" in side:
        answers["oracle_score"] = side["oracle"].tolist()
    answers["answer_logps"], answers["answer_tokens"] = (t.tolist() for t in side["answer_logps"])
    pairs = {"id": ids}
    for key in PAIRS:
        pairs[f"{key}_logps"], pairs[f"{key}_tokens"] = (t.tolist() for t in side[key])
    return DatasetDict({"answers": Dataset.from_dict(answers), "pairs": Dataset.from_dict(pairs)})


def load(folder: str | Path, validation, num_prompts: int | None) -> dict:
    """The SFT side saved by the sft_answers stage, as `measure` returns it; a UserError if it was computed for other
    validation rows or another number of prompts."""
    from datasets import load_from_disk

    saved = load_from_disk(str(folder), keep_in_memory=True)
    answers, pairs, ids = saved["answers"], saved["pairs"], list(validation["id"])
    if list(pairs["id"]) != ids or list(answers["id"]) != ids[:num_prompts]:
        raise UserError(f"{folder}: the SFT answers were computed for other validation rows or another "
                        "eval.num_prompts than this evaluation's: rerun the sft_answers stage (`dvc repro sft_answers`).")
    for column in ("answer_logps", "rm_std"):
        if column not in answers.column_names:
            raise UserError(f"{folder}: the SFT answers have no '{column}' column (an older version of the stage "
                            "wrote them): rerun the sft_answers stage (`dvc repro sft_answers`).")
    side = {"answers": [list(a) for a in answers["answer_ids"]],
            "rm": torch.tensor(answers["rm_score"], dtype=torch.float32),
            "rm_std": torch.tensor(answers["rm_std"], dtype=torch.float32)}
    if "oracle_score" in answers.column_names:
        side["oracle"] = torch.tensor(answers["oracle_score"], dtype=torch.float32)
    side["answer_logps"] = (torch.tensor(answers["answer_logps"], dtype=torch.float32),
                            torch.tensor(answers["answer_tokens"], dtype=torch.int64))
    for key in PAIRS:
        side[key] = (torch.tensor(pairs[f"{key}_logps"], dtype=torch.float32),
                     torch.tensor(pairs[f"{key}_tokens"], dtype=torch.int64))
    return side


def run(params, paths) -> None:
    """The sft_answers stage: paths.sft_answers holds the SFT side and the settings it was computed with."""
    settings = {k: getattr(params.eval, k) for k in ("num_prompts", "max_new_tokens", "temperature", "top_p",
                                                      "batch_size")}
    splits = compute(params, paths)
    with atomic_dir(paths.sft_answers) as tmp:
        splits.save_to_disk(str(tmp))
        write_json(tmp / "sft_answers.json", provenance(seed=params.seed, source=params.data.source,
                                                        model=params.model, eval=settings))
    print(f"sft_answers: {len(splits['answers'])} answers, {len(splits['pairs'])} validation pairs")
