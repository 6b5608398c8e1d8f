"""rlhf/stats.py on hand-computed values, and the evaluate metrics built from it."""
import math

import pytest
import torch

from rlhf import evaluate, stats


def test_wilson_interval_of_7_in_10():
    """p = 0.7, z^2 = 3.8415: centre = 0.7 + 3.8415/20 = 0.89207, half = z sqrt(0.021 + 3.8415/400) = 0.34287,
    scale = 1 + 3.8415/10 = 1.38415: (0.89207 -+ 0.34287) / 1.38415 = (0.39678, 0.89221)."""
    assert stats.wilson_interval(7, 10) == pytest.approx((0.39678, 0.89221), abs=1e-5)


def test_wilson_interval_of_all_wins_is_not_a_point():
    """10 in 10: p(1-p) = 0, half = z * z/20 = z^2/20, so low = (1 + z^2/20 - z^2/20) / (1 + z^2/10) = 0.72246."""
    assert stats.wilson_interval(10, 10) == pytest.approx((0.72246, 1.0), abs=1e-5)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_of_a_constant_difference_is_that_point():
    """Every resample of all-wins is all wins, and every resample of a constant difference has that mean."""
    a, b = torch.tensor([2.0, 3.0, 5.0, 1.0]), torch.tensor([1.0, 2.0, 4.0, 0.0])
    assert stats.mean_difference_interval(a, b) == pytest.approx((1.0, 1.0))
    lc, low, high = stats.lc_win_rate(a, b, torch.tensor([5, 9, 2, 7]), torch.tensor([5, 3, 4, 7]))
    assert (lc, low, high) == (1.0, 1.0, 1.0)


def test_bootstrap_is_paired_over_prompts():
    """a = b + 0.1 on prompts whose scores vary widely: resampling prompts (both sides together) gives the exact
    difference every time; resampling the sides apart would give an interval about +-0.5 wide."""
    b = torch.randn(200, generator=torch.Generator().manual_seed(0)) * 3
    assert stats.mean_difference_interval(b + 0.1, b) == pytest.approx((0.1, 0.1), abs=1e-6)


def test_bootstrap_interval_matches_the_normal_one_and_is_seeded():
    """Differences with sd 1 on 400 prompts: the 95% interval is about mean -+ 1.96 / sqrt(400) = mean -+ 0.098."""
    diff = torch.randn(400, generator=torch.Generator().manual_seed(1))
    low, high = stats.mean_difference_interval(diff, torch.zeros(400), seed=3)
    half = 1.96 * diff.std().item() / 20
    assert low == pytest.approx(diff.mean().item() - half, abs=0.02)
    assert high == pytest.approx(diff.mean().item() + half, abs=0.02)
    assert stats.mean_difference_interval(diff, torch.zeros(400), seed=3) == (low, high)
    assert stats.mean_difference_interval(diff, torch.zeros(400), seed=4) != (low, high)


def test_lc_win_rate_equals_the_raw_one_at_equal_lengths():
    """Length differences all 0: the slope has nothing to fit, so sigmoid(b0) is the share of wins. A tie (the last
    prompt) is not a win, as in the raw win rate: 7 wins in 11."""
    a = torch.tensor([2.0] * 7 + [0.0] * 3 + [1.0])
    b = torch.ones(11)
    lengths = torch.full((11,), 12)
    lc, low, high = stats.lc_win_rate(a, b, lengths, lengths)
    assert lc == pytest.approx(7 / 11, abs=1e-9)
    assert low < lc < high


def test_lc_win_rate_discounts_wins_that_come_from_length():
    """A length-hacking policy: its 7 wins are all longer answers than SFT's, its 3 losses are not. At equal length
    it would win less often than its raw 0.7. A policy that loses where it rambles (its 3 losses are its 3 longest
    answers) would win more often at equal length."""
    wins = torch.tensor([1.0] * 7 + [0.0] * 3)
    longer = torch.tensor([1, 2, 3, 4, 5, 6, 2, -1, 0, -2])
    lc, _, _ = stats.lc_win_rate(wins, torch.zeros(10), longer, torch.zeros(10))
    assert 0.0 < lc < 0.7
    losses_longer = torch.tensor([-1, 0, -2, 1, 0, -1, 0, 3, 4, 5])
    lc_losses_longer, _, _ = stats.lc_win_rate(wins, torch.zeros(10), losses_longer, torch.zeros(10))
    assert 0.7 < lc_losses_longer < 1.0


def test_lc_fit_is_the_penalised_maximum_likelihood():
    """Against the same objective minimised by LBFGS: -sum log-likelihood + b1^2 / 2, with x = d / sd(d)."""
    generator = torch.Generator().manual_seed(0)
    d = torch.randn(50, generator=generator, dtype=torch.float64) * 4 + 1
    y = (torch.rand(50, generator=generator, dtype=torch.float64) < torch.sigmoid(0.3 + 0.5 * d)).double()
    x = d / d.std(correction=0)
    beta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([beta], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

    def objective():
        optimiser.zero_grad()
        logits = beta[0] + beta[1] * x
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum") + beta[1] ** 2 / 2
        loss.backward()
        return loss

    optimiser.step(objective)
    assert stats.lc_fit(y, d).item() == pytest.approx(torch.sigmoid(beta[0]).item(), abs=1e-6)
    batched = stats.lc_fit(torch.stack([y, 1 - y]), torch.stack([d, d]))
    assert batched[0].item() == pytest.approx(stats.lc_fit(y, d).item(), abs=1e-12)


def test_lc_fit_degenerate_cases_are_finite():
    """All losses: 0.0; length separating wins from losses exactly: a finite fit, not NaN (the slope's penalty)."""
    d = torch.tensor([-3.0, -1.0, 1.0, 3.0])
    assert stats.lc_fit(torch.zeros(4), d).item() == 0.0
    separated = stats.lc_fit(torch.tensor([0.0, 0.0, 1.0, 1.0]), d).item()
    assert separated == pytest.approx(0.5, abs=1e-9)  # symmetric around d = 0


def test_repetition_by_hand():
    """"a b a b a b": 4-grams abab, baba, abab: 2 distinct of 3, repetition 1/3; trigrams aba, bab, aba, bab: 1/2.
    "a b c d e" has 2 distinct 4-grams of 2: 0. "a b" has no 4-gram and is left out: mean (1/3 + 0) / 2."""
    loop, plain, short = [1, 2, 1, 2, 1, 2], [1, 2, 3, 4, 5], [1, 2]
    assert stats.repetition([loop]) == pytest.approx(1 / 3)
    assert stats.repetition([loop], n=3) == pytest.approx(1 / 2)
    assert stats.repetition([loop, plain, short]) == pytest.approx(1 / 6)
    assert stats.repetition([short]) == 0.0


def test_distinct_n_by_hand():
    """[1 2 3], [1 2 4]: unigrams 4 distinct of 6; bigrams (1,2), (2,3), (1,2), (2,4): 3 distinct of 4."""
    answers = [[1, 2, 3], [1, 2, 4]]
    assert stats.distinct_n(answers, 1) == pytest.approx(4 / 6)
    assert stats.distinct_n(answers, 2) == pytest.approx(3 / 4)
    assert stats.distinct_n([[1]], 2) == 0.0


def test_empty_and_cut_off_answers():
    """Stop id 9, max_new_tokens 3. Empty: [9] and [] (2 of 5). Cut off: [1 2 3] only; [1 2 9] ended in time."""
    answers = [[9], [], [1, 2, 9], [1, 2, 3], [1, 9]]
    assert stats.empty_share(answers, [9]) == pytest.approx(2 / 5)
    assert stats.cutoff_share(answers, 3, [9]) == pytest.approx(1 / 5)
    assert stats.cutoff_share(answers, 3, [3, 9]) == 0.0  # a second stop id (EOS) ends an answer too


def test_perplexity_is_token_weighted():
    """Log-probs -1 over 3 tokens and -4 over 1: exp(5 / 4), not the mean of the answers' own perplexities."""
    assert stats.perplexity(torch.tensor([-1.0, -4.0]), torch.tensor([3, 1])) == pytest.approx(math.exp(5 / 4))
    assert stats.perplexity(torch.tensor([0.0]), torch.tensor([0])) == 1.0


def test_evaluate_metrics_are_named_scalars():
    """The keys evaluate writes, all plain floats: 7 oracle wins of 10 with equal lengths."""
    policy, sft = torch.tensor([2.0] * 7 + [0.0] * 3), torch.ones(10)
    lengths = {"policy": torch.full((10,), 5), "sft": torch.full((10,), 5)}
    out = evaluate.interval_metrics({"oracle": {"policy": policy, "sft": sft}}, lengths, seed=0)
    interval = (out["oracle_win_rate_ci_low"], out["oracle_win_rate_ci_high"])
    assert interval == pytest.approx((0.39678, 0.89221), abs=1e-5)  # Wilson 7/10, as above
    assert out["oracle_win_rate_lc"] == pytest.approx(0.7, abs=1e-9)
    assert out["oracle_mean_diff"] == pytest.approx(0.4)
    assert out["oracle_mean_diff_ci_low"] < 0.4 < out["oracle_mean_diff_ci_high"]
    answers = {"policy": [[1, 2, 1, 2, 1, 2], [9]], "sft": [[1, 2, 3], [4, 9]]}
    logps = {"policy": (torch.tensor([-6.0, -1.0]), torch.tensor([6, 1]))}
    out |= evaluate.degeneration_metrics(answers, logps, max_new_tokens=3, stops=[9])
    assert out["repetition_policy"] == pytest.approx(1 / 3) and out["empty_share_policy"] == 0.5
    assert out["cutoff_share_sft"] == 0.5 and out["distinct1_sft"] == 1.0
    assert out["fluency_perplexity_policy"] == pytest.approx(math.e)  # exp(7 / 7)
    assert "fluency_perplexity_sft" not in out
    assert all(type(v) is float for v in out.values())
