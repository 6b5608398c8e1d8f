"""PPO's rollouts: the typed records one iteration passes around, and how they are made: sample answers, score them,
and run the per-token forward passes (policy log-probs, values, entropy; the reference's log-probs).

Tensors are (B, L) over prompt + answer or (B, T) over answer tokens only: B answers, L the longest prompt + answer,
T the longest answer; both right-padded. `mask` is 1 on answer tokens (the EOS included) and 0 on padding. The
records are named tuples of tensors or floats, as torchtune's `Trajectory` and `PPOStats`.
"""
from typing import NamedTuple

import torch

from rlhf import generation, scoring
from rlhf.ppo import functional


class Sequences(NamedTuple):
    """Prompt + answer tokens of one rollout, lined up for per-token forward passes."""
    ids: torch.Tensor  # (B, L) prompt + answer ids, right-padded
    attention_mask: torch.Tensor  # (B, L)
    starts: torch.Tensor  # (B,) the position in the shifted logits that predicts each answer's first token
    mask: torch.Tensor  # (B, T) 1 on answer tokens


class Experience(NamedTuple):
    """Everything the update reads from one rollout: its sequences and, per answer token, what the sampler saw."""
    ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    starts: torch.Tensor  # (B,)
    mask: torch.Tensor  # (B, T)
    logp: torch.Tensor  # (B, T) the sampling policy's log-probs: the ratio's denominator
    values: torch.Tensor  # (B, T) the critic's values then: the value loss's clipping centre
    advantages: torch.Tensor  # (B, T) GAE, whitened if ppo.whiten_advantages
    returns: torch.Tensor  # (B, T) the value targets

    def select(self, index: torch.Tensor) -> "Experience":
        """The rows `index` (a minibatch) of every tensor."""
        return Experience(*(t[index.to(t.device)] for t in self))


class RolloutStats(NamedTuple):
    """One rollout's metrics, each a mean over its answers (or answer tokens)."""
    score: float  # the reward model's raw score
    score_normalized: float  # the score optimized (ppo.rewards' weighted sum), the missing-EOS penalty included
    kl: float  # per answer, summed over its tokens
    kl_coef: float  # the coefficient the rewards were computed with
    entropy: float
    explained_variance: float
    response_length: float
    ended_fraction: float  # answers that end with the template's end of turn (or EOS), not cut off


class UpdateStats(NamedTuple):
    """One update's losses and diagnostics, means over its minibatch steps (ratio_max: the max)."""
    clip_fraction: float
    approx_kl: float
    ratio_mean: float
    ratio_max: float
    policy_loss: float
    value_loss: float
    value_clip_fraction: float


def rollout_tensors(prompts: list[list[int]], answers: list[list[int]], pad_id: int) -> Sequences:
    """prompt + answer ids right-padded (B, L), their attention mask (B, L), the position in the shifted logits that
    predicts each answer's first token (B,), and the answer-token mask (B, T)."""
    ids, attention_mask = scoring.pad_right([p + a for p, a in zip(prompts, answers)], pad_id)
    lengths = torch.tensor([len(a) for a in answers])
    mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).float()
    starts = torch.tensor([len(p) - 1 for p in prompts])  # logits at position t predict token t + 1
    return Sequences(ids, attention_mask, starts, mask)


def gather_answer(x: torch.Tensor, starts: torch.Tensor, width: int) -> torch.Tensor:
    """The `width` positions from each row's start, (B, L, ...) -> (B, width, ...); past the end, the last position
    (it only pads, and the mask drops it)."""
    index = (starts[:, None] + torch.arange(width, device=x.device)).clamp(max=x.shape[1] - 1)
    return x.gather(1, index.view(*index.shape, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:]))


def token_stats(model, value_head, ids, attention_mask, starts, width: int, temperature: float):
    """Per answer token: log-prob of the sampled token, the value of the state before it (None without a value
    head) and the entropy of the next-token distribution, each (B, width). Logits are divided by the sampling
    temperature, so the ratios and the KL are those of the distribution the answers were sampled from."""
    out = model(input_ids=ids, attention_mask=attention_mask, output_hidden_states=value_head is not None)
    logits = gather_answer(out.logits[:, :-1].float(), starts, width) / temperature
    targets = gather_answer(ids[:, 1:], starts, width)
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    values = None
    if value_head is not None:
        values = value_head(gather_answer(out.hidden_states[-1][:, :-1].float(), starts, width)).squeeze(-1)
    return logp, values, functional.entropy_from_logits(logits.detach())


def critic_values(critic, value_head, ids, attention_mask, starts, width: int) -> torch.Tensor:
    """The separate critic's value of the state before each answer token, (B, width): its trunk's last hidden states
    (after the final norm, as its reward-model head read them) through the value head."""
    hidden = critic(input_ids=ids, attention_mask=attention_mask).last_hidden_state[:, :-1].float()
    return value_head(gather_answer(hidden, starts, width)).squeeze(-1)


def forward(model, critic, value_head, ids, attention_mask, starts, width: int, temperature: float):
    """(logp, values, entropy) from the policy and whichever critic there is."""
    logp, values, entropy = token_stats(model, value_head if critic is None else None, ids, attention_mask, starts,
                                        width, temperature)
    if critic is not None:
        values = critic_values(critic, value_head, ids, attention_mask, starts, width)
    return logp, values, entropy


@torch.no_grad()
def rollout(model, critic, value_head, reward_fn, tokenizer, prompts: list[list[int]], section, kl_coef: float,
            seed: int) -> tuple[Experience, RolloutStats]:
    """Sample answers, score them, and compute everything the update needs. `reward_fn(prompts, answers)` returns
    (the reward model's raw score, the score to optimize), each (B,): `rewards.total_score` in the align stage."""
    device = next(model.parameters()).device
    answers = generation.generate(model, prompts, tokenizer, section.max_new_tokens, section.temperature, seed=seed)
    score, normalized = reward_fn(prompts, answers)[:2]
    stops = generation.stop_ids(tokenizer)  # the template's end of turn (and EOS): what an ended answer ends with
    ended = torch.tensor([bool(a) and a[-1] in stops for a in answers], device=device)
    normalized = normalized.to(device)
    if section.missing_eos_penalty is not None:  # cut off at max_new_tokens: the reward model never saw such an end
        normalized = torch.where(ended, normalized, normalized - section.missing_eos_penalty)
    batch = Sequences(*(t.to(device) for t in rollout_tensors(prompts, answers, tokenizer.pad_token_id)))
    width = batch.mask.shape[1]

    parts = []  # forward passes in chunks of mini_batch_size, to bound memory as the update does
    for chunk in torch.arange(len(prompts), device=device).split(section.mini_batch_size):
        args = (batch.ids[chunk], batch.attention_mask[chunk], batch.starts[chunk], width)
        logp, values, entropy = forward(model, critic, value_head, *args, section.temperature)
        with model.disable_adapter():
            ref_logp, _, _ = token_stats(model, None, *args, section.temperature)
        parts.append((logp, values, entropy, ref_logp))
    logp, values, entropy, ref_logp = (torch.cat(p) for p in zip(*parts))

    mask = batch.mask
    rewards = functional.kl_penalty_rewards(normalized, logp, ref_logp, mask, kl_coef)
    advantages, returns = functional.gae(rewards, values, mask, section.gamma, section.lam)
    if section.whiten_advantages:
        advantages = functional.masked_whiten(advantages, mask)
    experience = Experience(*batch, logp=logp, values=values, advantages=advantages, returns=returns)
    stats = RolloutStats(
        score=score.mean().item(),
        score_normalized=normalized.mean().item(),
        kl=((logp - ref_logp) * mask).sum(1).mean().item(),
        kl_coef=kl_coef,
        entropy=functional.masked_mean(entropy, mask).item(),
        explained_variance=functional.explained_variance(values, returns, mask).item(),
        response_length=mask.sum(1).mean().item(),
        ended_fraction=ended.float().mean().item(),
    )
    return experience, stats
