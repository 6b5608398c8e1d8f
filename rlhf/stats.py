"""Statistics for the evaluation: intervals, a length-controlled win rate, and degeneration measures.

Pure functions on tensors and token id lists; `evaluate_metrics` turns what rlhf/evaluate.py already has into the
scalar keys of metrics/eval.json.

Which interval where:
- a win rate (share of prompts where the policy's answer beats SFT's; a tie is not a win, as in `evaluate.win_rate`)
  is a plain binomial share of independent prompts, so it gets a Wilson score interval: closed form, no seed, and
  unlike the percentile bootstrap it does not shrink to a point at 0 or 1 (10 wins in 10 give [0.72, 1], not [1, 1]);
- a mean difference and the length-controlled win rate have no closed form, so they get a seeded paired bootstrap
  over prompts: resample prompt indices with replacement, recompute the statistic on both sides' rows of the same
  prompts (the pairing keeps the prompt-to-prompt variation out of the difference), take the 2.5% and 97.5%
  percentiles (Efron & Tibshirani 1993, ch. 13).
"""
import math

import torch

Z95 = 1.959964  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial share successes / n (Wilson 1927; Agresti & Coull 1998):
    (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n). (0.0, 1.0) when n is 0: nothing is known."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return max(0.0, (centre - half) / scale), min(1.0, (centre + half) / scale)


def bootstrap_indices(n: int, num_resamples: int = 1000, seed: int = 0) -> torch.Tensor:
    """(num_resamples, n) prompt indices drawn with replacement, from a private generator: the same seed gives the
    same resamples whatever else ran in the process."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (num_resamples, n), generator=generator)


def percentile_interval(estimates: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """The (1-level)/2 and (1+level)/2 quantiles of (B,) bootstrap estimates."""
    low, high = torch.quantile(estimates.double(), torch.tensor([(1 - level) / 2, (1 + level) / 2],
                                                                dtype=torch.float64)).tolist()
    return low, high


def mean_difference_interval(a: torch.Tensor, b: torch.Tensor, num_resamples: int = 1000,
                             seed: int = 0) -> tuple[float, float]:
    """Paired bootstrap interval of mean(a - b). Inputs: (N,) scores of the same N prompts, a[i] and b[i] of prompt
    i (resampling the differences is resampling the prompts with both sides together)."""
    diff = (a - b).double()
    return percentile_interval(diff[bootstrap_indices(len(diff), num_resamples, seed)].mean(-1))


def lc_fit(wins: torch.Tensor, length_diff: torch.Tensor, steps: int = 25, slope_penalty: float = 1.0) -> torch.Tensor:
    """Length-controlled win probability: P(win | length difference 0) under the logistic regression
    P(win) = sigmoid(b0 + b1 * d / sd(d)), fitted by Newton's method (IRLS) on each row of a batch.

    Inputs: (B, N) or (N,) wins (1.0: the policy's answer beats SFT's; 0.0: a tie or a loss, as in the raw win rate)
    and length differences d (policy minus SFT, tokens). Output: (B,) or () sigmoid(b0). This is AlpacaEval 2's idea
    (Dubois et al. 2024, eq. 1) with length as the only covariate. d is scaled by its standard deviation but not
    centred, so that d = 0 stays x = 0. A Gaussian penalty slope_penalty * b1^2 / 2 on the slope alone keeps b1
    finite when length separates wins from losses; the intercept is free, so:
    - no length variance (every d equal): x is 0, b1 stays 0 and sigmoid(b0) is the raw win rate;
    - all wins or all losses: b0 has no finite optimum; the raw win rate (1.0 or 0.0) is returned, never NaN.
    """
    y, d = wins.double(), length_diff.double()
    single = y.dim() == 1
    y, d = (y[None], d[None]) if single else (y, d)
    sd = d.std(-1, correction=0, keepdim=True)
    x = torch.where(sd > 0, d / sd.clamp_min(1e-12), torch.zeros_like(d))
    beta = torch.zeros(y.shape[0], 2, dtype=torch.float64)
    penalty = torch.diag(torch.tensor([0.0, slope_penalty], dtype=torch.float64))
    features = torch.stack([torch.ones_like(x), x], -1)                         # (B, N, 2)
    raw = y.mean(-1)
    for _ in range(steps):
        p = torch.sigmoid((features @ beta[..., None]).squeeze(-1))             # (B, N)
        grad = features.transpose(1, 2) @ (y - p)[..., None] - (penalty @ beta[..., None])     # (B, 2, 1)
        weights = (p * (1 - p)).clamp_min(1e-10)
        hessian = features.transpose(1, 2) @ (features * weights[..., None]) + penalty          # (B, 2, 2)
        beta = beta + torch.linalg.solve(hessian, grad).squeeze(-1)
    degenerate = (raw == 0) | (raw == 1)
    out = torch.where(degenerate, raw, torch.sigmoid(beta[:, 0]))
    return out[0] if single else out


def lc_win_rate(a: torch.Tensor, b: torch.Tensor, length_a: torch.Tensor, length_b: torch.Tensor,
                num_resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(length-controlled win rate of a over b, its paired-bootstrap interval low, high). Inputs: (N,) scores and
    (N,) answer lengths in tokens of the same N prompts; a tie is not a win (see `lc_fit`)."""
    wins, diff = (a > b).double(), (length_a - length_b).double()
    rows = bootstrap_indices(len(wins), num_resamples, seed)
    low, high = percentile_interval(lc_fit(wins[rows], diff[rows]))
    return lc_fit(wins, diff).item(), low, high


def ngrams(ids: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def repetition(answers: list[list[int]], n: int = 4) -> float:
    """Share of repeated n-grams within an answer, 1 - distinct n-grams / n-grams, averaged over the answers that
    have at least one n-gram (0.0 if none has; empty answers are `empty_share`'s job). n = 4 tokens by default:
    short enough to catch a looping phrase, long enough that the template's own "the X was" is not a repeat."""
    shares = [1 - len(set(g)) / len(g) for g in (ngrams(a, n) for a in answers) if g]
    return sum(shares) / len(shares) if shares else 0.0


def distinct_n(answers: list[list[int]], n: int) -> float:
    """Corpus-level distinct-n (Li et al. 2016): distinct n-grams over all answers / all n-grams; 0.0 if none."""
    grams = [g for a in answers for g in ngrams(a, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def empty_share(answers: list[list[int]], stops: list[int]) -> float:
    """Share of answers with no token but stop tokens (`generation.generate` keeps the stop token that ended it)."""
    return sum(all(t in stops for t in a) for a in answers) / len(answers)


def cutoff_share(answers: list[list[int]], max_new_tokens: int, stops: list[int]) -> float:
    """Share of answers that hit max_new_tokens without a stop token: `generation.generate` cuts an answer after its
    first stop token, so one that ran out of room is exactly max_new_tokens long and does not end in a stop."""
    return sum(len(a) >= max_new_tokens and a[-1] not in stops for a in answers) / len(answers)


def perplexity(logp_sums: torch.Tensor, counts: torch.Tensor) -> float:
    """Token-weighted perplexity exp(-sum of log-probs / number of tokens). Inputs: (N,) summed log-probs and (N,)
    token counts, as `scoring.completion_logprobs` returns them. 1.0 when there is no token at all (every answer
    empty), the perplexity of nothing: `empty_share` flags that case."""
    total = counts.sum().item()
    return math.exp(-logp_sums.double().sum().item() / total) if total else 1.0
