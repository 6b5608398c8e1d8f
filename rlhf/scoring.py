"""Batched forward passes that later stages measure with: completion log-probabilities under a causal LM, and
reward-model scores (of each member of an ensemble). Pure functions of (model, token ids); no training state."""
from typing import NamedTuple

import torch

from rlhf import models


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (batch, longest), padded on the right."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


@torch.no_grad()
def completion_logprobs(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                        batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(completion token | everything before it) per sequence, and the completion token counts.

    Shapes: two (N,) tensors. The prompt tokens are context only; their log-probabilities are not counted.
    """
    sums, counts = [], []
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        p, c = prompts[start:start + batch_size], completions[start:start + batch_size]
        ids, mask = pad_right([a + b for a, b in zip(p, c)], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        targets = torch.zeros_like(mask[:, 1:], dtype=torch.bool)
        for i, (a, b) in enumerate(zip(p, c)):
            targets[i, len(a) - 1: len(a) + len(b) - 1] = True  # position t predicts token t + 1
        sums.append((logps * targets).sum(-1).cpu())
        counts.append(targets.sum(-1).cpu())
    return torch.cat(sums), torch.cat(counts)


@torch.no_grad()
def reward_scores(model, sequences: list[list[int]], pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """Scalar reward per whole sequence (prompt + response), read by the model's head at the last non-pad
    token. Shape (N,)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(sequences), batch_size):
        ids, mask = pad_right(sequences[start:start + batch_size], pad_id)
        out.append(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float().cpu())
    return torch.cat(out)


class Scores(NamedTuple):
    """A reward model's (or ensemble's) scores of B answers. One member: std is 0 and members has one column."""
    raw: torch.Tensor         # (B,) raw head outputs, averaged over the members
    normalized: torch.Tensor  # (B,) mean over members of each member's score normalized by its own validation stats
    std: torch.Tensor         # (B,) the members' disagreement: std (population) of their normalized scores
    members: torch.Tensor     # (B, k) each member's normalized score


def ensemble_scores(raw: torch.Tensor, stats: list[dict]) -> Scores:
    """Scores from the members' raw outputs `raw` (B, k), member j normalized with stats[j] (score_mean,
    score_std of its validation pairs), so that members on different scales weigh alike."""
    mean = torch.tensor([s["score_mean"] for s in stats], dtype=raw.dtype)
    std = torch.tensor([s["score_std"] for s in stats], dtype=raw.dtype)
    members = (raw - mean) / std
    return Scores(raw.mean(1), members.mean(1), members.std(1, correction=0), members)


def aggregate(scores: Scores, how: str, coef: float) -> torch.Tensor:
    """The reward an RL method optimizes, (B,): `mean` the members' normalized mean; `mean_minus_std` the mean minus
    coef * std, and `min` the lowest member, the conservative rewards of uncertainty-weighted optimization (Coste et
    al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization", eq. 4 and 3): answers the members disagree on
    are worth less."""
    if how == "mean":
        return scores.normalized
    if how == "mean_minus_std":
        return scores.normalized - coef * scores.std
    if how == "min":
        return scores.members.min(1).values
    raise ValueError(f"unknown aggregate {how!r}")


def member_scores(scorer, stats: list[dict], sequences: list[list[int]], pad_id: int, batch_size: int) -> torch.Tensor:
    """Raw scores (N, k) of each sequence by each of the k members, member j the scorer's adapter stats[j]["adapter"]
    (None: the scorer as it is). k adapters cost k forward passes (bench/reward_ensemble.py)."""
    columns = []
    for member in stats:
        with models.active_adapter(scorer, member.get("adapter")):
            columns.append(reward_scores(scorer, sequences, pad_id, batch_size))
    return torch.stack(columns, 1)


def reward_function(scorer, stats: list[dict], tokenizer, turn_end: tuple[int, list[int]], batch_size: int):
    """`Scores` of prompt + answer by the reward model, an ensemble of len(stats) members (models.reward_model).
    `turn_end` is `base.end_of_turn`: the token that ends an answer and what the chat template writes after it
    (ChatML: <|im_end|>, then a newline). Answers that ended get that appended, as every answer the reward model was
    trained on had it. The model reads the last token: scored at a bare <|im_end|>, the built-in task's reward model
    separated validation pairs 4 times less and tracked the oracle far worse (correlation 0.53 instead of 0.87 on SFT
    samples)."""
    end, suffix = turn_end

    def score(prompts: list[list[int]], answers: list[list[int]]) -> Scores:
        ended = [a + suffix if a[-1:] == [end] else a for a in answers]
        sequences = [p + a for p, a in zip(prompts, ended)]
        return ensemble_scores(member_scores(scorer, stats, sequences, tokenizer.pad_token_id, batch_size), stats)
    return score
