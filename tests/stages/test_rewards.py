"""A reward function's output reaches what each RL method learns from: the advantages GRPOTrainer and RLOOTrainer
compute (`_generate_and_score_completions` returns them) and the rewards of PPO's rollouts. The function is the
built-in length penalty alone (no reward model), so shorter answers must get the higher advantage: a sign lost on the
way (in rlhf/rewards.py, the weights handed to TRL, PPO's weighted sum) turns the order around."""
import json

import pytest
import torch
import trl

from rlhf import config, rewards, scoring
from rlhf.ppo import rollouts
from tests.stages.test_align import run_align
from tests.stages.test_ppo import tiny_policy

LENGTH_ONLY = {"reward_model": 0.0, "aggregate": "mean", "uncertainty_coef": 1.0, "functions": {"length_penalty": 2.0}}


def record_scoring(monkeypatch, trainer_class) -> list[dict]:
    """Every batch `trainer_class` scores while it trains, as it returns it (completion ids, mask, advantages)."""
    seen, original = [], trainer_class._generate_and_score_completions

    def recording(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.append({k: out[k].detach().cpu() for k in ("completion_mask", "advantages")})
        return out
    monkeypatch.setattr(trainer_class, "_generate_and_score_completions", recording)
    return seen


@pytest.mark.parametrize("method, trainer_class", [("grpo", trl.GRPOTrainer), ("rloo", trl.RLOOTrainer)])
def test_the_length_penalty_reaches_the_advantages(tiny_trained, tmp_path, monkeypatch, method, trainer_class):
    """Within each group of num_generations answers to one prompt, a shorter answer has the higher advantage, and
    answers of equal length equal ones; the logged reward is -2 x length / max_completion_length. beta 0: RLOO puts
    the KL into the reward, which would blur the order."""
    seen = record_scoring(monkeypatch, trainer_class)
    work = run_align(tiny_trained, tmp_path, method, **{f"{method}.rewards": LENGTH_ONLY, f"{method}.beta": 0.0})
    group = getattr(config.load(work / "params.yaml"), method).num_generations
    lengths = torch.cat([b["completion_mask"].sum(1) for b in seen]).float().view(-1, group)
    advantages = torch.cat([b["advantages"] for b in seen]).view(-1, group)
    shorter = lengths[:, :, None] < lengths[:, None, :]  # (prompt, i, j): answer i shorter than answer j
    assert shorter.sum() >= 4, "too few answers of different lengths to tell"
    assert (advantages[:, :, None] > advantages[:, None, :])[shorter].all()
    equal = lengths[:, :, None] == lengths[:, None, :]
    torch.testing.assert_close(advantages[:, :, None].expand_as(equal)[equal],
                               advantages[:, None, :].expand_as(equal)[equal])
    metrics = json.loads((work / "metrics/align.json").read_text())
    assert "rewards_length_penalty_mean" in metrics and "rewards_rm_reward_mean" not in metrics
    assert metrics["reward"] == pytest.approx(2 * metrics["rewards_length_penalty_mean"], rel=1e-5)
    assert -2 <= metrics["reward"] < 0


def test_the_length_penalty_reaches_ppo_rollouts(tiny_trained):
    """PPO's score is reward_model x the reward model's + weight x function: with reward model weight 0 and the
    length penalty at weight 2, no KL penalty and lambda = gamma = 1, each answer's return at its first token is
    -2 x its length / max_new_tokens (the value head cancels out of GAE's returns at lambda 1)."""
    params, tokenizer, prompts, model, value_head, _ = tiny_policy(tiny_trained, whiten_advantages=False, lam=1.0,
                                                                   gamma=1.0)
    section = config.Rewards(**LENGTH_ONLY)
    funcs = rewards.functions(section, "ppo", tokenizer, params.data.source, params.ppo.max_new_tokens)

    def zero_scorer(prompt_ids, answer_ids):
        return scoring.ensemble_scores(torch.zeros(len(answer_ids), 1), [{"score_mean": 0.0, "score_std": 1.0}])
    reward_fn = rewards.total_score(zero_scorer, section, funcs, tokenizer)
    experience, metrics = rollouts.rollout(model, None, value_head, reward_fn, tokenizer, prompts[:16], params.ppo,
                                           kl_coef=0.0, seed=5)
    lengths = experience.mask.sum(1)
    assert lengths.unique().numel() > 1
    torch.testing.assert_close(experience.returns[:, 0], -2 * lengths / params.ppo.max_new_tokens)
    assert metrics.score_normalized == pytest.approx((-2 * lengths / params.ppo.max_new_tokens).mean().item())

