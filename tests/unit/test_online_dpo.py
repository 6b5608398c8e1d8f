"""online_dpo's pure parts: which sampled answers make a round's pair, and which prompts a round samples."""
import pytest
import torch

from rlhf.methods import online_dpo
from tests.conftest import repo_params

REWARDS = torch.tensor([[0.1, 0.9, -0.5],    # margin 1.4: answer 1 against answer 2
                        [0.2, 0.25, 0.1],    # margin 0.15 < 0.5: dropped
                        [-1.0, 0.0, 1.5],    # margin 2.5: answer 2 against answer 0
                        [0.3, 0.3, 0.3]])    # all tied: dropped (even at margin 0, chosen would equal rejected)


def test_best_against_worst_above_the_margin():
    pairs, dropped = online_dpo.best_worst_pairs(REWARDS, min_margin=0.5)
    assert pairs == [(0, 1, 2), (2, 2, 0)] and dropped == 2
    pairs, dropped = online_dpo.best_worst_pairs(REWARDS, min_margin=0.0)
    assert pairs == [(0, 1, 2), (1, 1, 2), (2, 2, 0)] and dropped == 1


class Letters:
    """A tokenizer stand-in: token i decodes to the i-th letter."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i) for i in ids)


def test_a_rounds_pairs_hold_the_margin_and_the_higher_scored_answer_is_chosen(monkeypatch):
    """make_round's rows (what pairs.jsonl holds and DPO trains on): chosen is the answer with the higher reward, by at
    least min_margin, and its ids and text are that answer's."""
    answers = [[[p, a] for a in range(3)] for p in range(4)]  # answer a to prompt p: tokens [p, a]
    monkeypatch.setattr(online_dpo, "sample_and_judge", lambda *args: (answers, REWARDS))
    section = repo_params({"online_dpo.min_margin": 0.5}).online_dpo
    prompts = [[7, p] for p in range(4)]
    rows, data = online_dpo.make_round(None, prompts, [0, 1, 2, 3], Letters(), None, section, seed=0, round_number=1)
    assert [row["chosen_ids"] for row in rows] == [[0, 1], [2, 2]]
    assert [row["rejected_ids"] for row in rows] == [[0, 2], [2, 0]]
    for row in rows:
        p, chosen, rejected = row["chosen_ids"][0], row["chosen_ids"][1], row["rejected_ids"][1]
        assert row["chosen_reward"] == pytest.approx(REWARDS[p, chosen].item())
        assert row["rejected_reward"] == pytest.approx(REWARDS[p, rejected].item())
        assert row["chosen_reward"] - row["rejected_reward"] >= section.min_margin
        assert row["chosen_reward"] == pytest.approx(REWARDS[p].max().item())
        assert row["chosen"] == Letters().decode(row["chosen_ids"]) and row["prompt_ids"] == prompts[p]
    assert data["pairs"] == 2 and data["dropped_under_margin"] == 2 and data["prompts"] == 4 and data["answers"] == 12
    assert data["mean_margin"] == pytest.approx((1.4 + 2.5) / 2)
    assert data["mean_chosen_reward"] == pytest.approx((0.9 + 1.5) / 2)


def test_round_prompts_are_seeded_and_drawn_anew_each_round():
    first = online_dpo.round_prompts(100, 10, seed=0, round_number=1)
    assert first == online_dpo.round_prompts(100, 10, seed=0, round_number=1) and len(set(first)) == 10
    assert first != online_dpo.round_prompts(100, 10, seed=0, round_number=2)
    assert first != online_dpo.round_prompts(100, 10, seed=1, round_number=1)
    assert online_dpo.round_prompts(5, None, 0, 1) == online_dpo.round_prompts(5, 10, 0, 1) == [0, 1, 2, 3, 4]


def test_each_prompt_is_sampled_once_per_round():
    assert online_dpo.distinct_prompts([[1, 2], [3], [1, 2], [4]]) == [[1, 2], [3], [4]]


def test_a_reward_function_decides_the_pairs(monkeypatch):
    """online_dpo.rewards with the reward model off and length_penalty on: each prompt's 2 answers (lengths 1 and 3,
    in either order) are judged -len/4, so the shorter one is chosen, whichever place it was sampled in."""
    from types import SimpleNamespace

    from rlhf import rewards, scoring

    section = repo_params({"online_dpo.rewards.reward_model": 0.0,
                           "online_dpo.rewards.functions": {"length_penalty": 1.0},
                           "online_dpo.samples_per_prompt": 2, "online_dpo.max_new_tokens": 4,
                           "online_dpo.min_margin": 0.1}).online_dpo
    answers = [[5], [6, 7, 8], [6, 7, 8], [5]]  # prompt 0: short first; prompt 1: long first
    monkeypatch.setattr(online_dpo.generation, "generate", lambda *args, **kwargs: answers)
    tokenizer = SimpleNamespace(decode=Letters().decode,
                                batch_decode=lambda ids, **kw: [Letters().decode(i) for i in ids])
    monkeypatch.setattr(rewards, "prompt_texts", lambda prompt_ids, tok: ["p"] * len(prompt_ids))
    funcs = rewards.functions(section.rewards, "online_dpo", tokenizer, "builtin:sentiment", section.max_new_tokens)
    def reward_model(prompt_ids, answer_ids):  # scores by place; at weight 0 it has no say
        raw = torch.arange(len(answer_ids), dtype=torch.float32)[:, None]
        return scoring.ensemble_scores(raw, [{"score_mean": 0.0, "score_std": 1.0}])

    score = rewards.total_score(reward_model, section.rewards, funcs, tokenizer)
    policy = SimpleNamespace(eval=lambda: None)
    rows, data = online_dpo.make_round(policy, [[1], [2]], [0, 1], tokenizer, score, section, seed=0, round_number=1)
    assert [(r["chosen_ids"], r["rejected_ids"]) for r in rows] == [([5], [6, 7, 8]), ([5], [6, 7, 8])]
    assert [r["chosen_reward"] for r in rows] == [-0.25, -0.25] and data["pairs"] == 2
