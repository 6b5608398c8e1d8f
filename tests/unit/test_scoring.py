"""The ensemble's combined scores and the conservative rewards, on hand-computed values."""
import pytest
import torch

from rlhf import scoring


def test_ensemble_std_is_zero_when_members_agree_and_positive_otherwise():
    """Two members with stats (mean 1, std 2) and (mean 0, std 1). Raw (3, 1) normalizes to (1, 1): std 0. Raw (5, 0)
    normalizes to (2, 0): mean 1, population std 1."""
    stats = [{"score_mean": 1.0, "score_std": 2.0}, {"score_mean": 0.0, "score_std": 1.0}]
    scores = scoring.ensemble_scores(torch.tensor([[3.0, 1.0], [5.0, 0.0]]), stats)
    assert scores.members.tolist() == [[1, 1], [2, 0]]
    assert scores.normalized.tolist() == [1, 1]
    assert scores.std.tolist() == [0, 1]
    assert scores.raw.tolist() == [2, 2.5]


def test_conservative_rewards():
    """Members (1, 1) and (2, 0): mean (1, 1), std (0, 1). mean - 0.5 std = (1, 0.5); min = (1, 0)."""
    stats = [{"score_mean": 0.0, "score_std": 1.0}] * 2
    scores = scoring.ensemble_scores(torch.tensor([[1.0, 1.0], [2.0, 0.0]]), stats)
    assert scoring.aggregate(scores, "mean", 0.5).tolist() == [1, 1]
    lower = scoring.aggregate(scores, "mean_minus_std", 0.5)
    assert lower.tolist() == [1, 0.5]
    assert torch.equal(scores.normalized - lower, 0.5 * scores.std)  # below the mean by exactly coef * std
    assert scoring.aggregate(scores, "min", 0.5).tolist() == [1, 0]
    with pytest.raises(ValueError):
        scoring.aggregate(scores, "max", 0.5)
