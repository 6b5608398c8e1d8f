"""PPO's math, pure functions on tensors: masked statistics, the KL-penalized per-token rewards, the adaptive KL
controller, GAE, the clipped policy and value losses, entropy and explained variance.

Tensors are (B, T): B answers, T = the longest answer's tokens, right-padded; `mask` is 1 on answer tokens (the EOS
included) and 0 on padding. Each function's docstring gives its shapes and the equation it computes, with its source.
"""
import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over the entries where `mask` is 1. Shapes: x, mask (B, T) -> scalar."""
    return (x * mask).sum() / mask.sum()


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance of `x` over the masked entries. (B, T) -> scalar."""
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`x` shifted and scaled to mean 0 and standard deviation 1 over the masked entries; 0 elsewhere. (B, T)."""
    return (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + eps) * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over the masked entries: 1 for perfect values, 0 for predicting the mean, negative
    for worse. (B, T) -> scalar."""
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim: H = logsumexp(z) - sum_v p_v z_v. (..., V) -> (...)."""
    return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


def kl_penalty_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                       kl_coef: float) -> torch.Tensor:
    """Per-token rewards r_t = -kl_coef * (log pi(a_t|s_t) - log pi_ref(a_t|s_t)), plus the sequence's score on its
    last answer token (Ouyang et al., 2022, eq. 2, spread over tokens; Ziegler et al., 2019).

    Shapes: score (B,); logp, ref_logp, mask (B, T), mask right-padded -> rewards (B, T), 0 on padding.
    """
    rewards = -kl_coef * (logp - ref_logp) * mask
    last = mask.sum(1).long().clamp(min=1) - 1
    rewards[torch.arange(len(score)), last] += score
    return rewards


def adaptive_kl_coef(kl_coef: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    """The adaptive KL controller of Ziegler et al. (2019, sec. 2.2): a proportional controller on log beta,

        e = clip(KL / KL_target - 1, -0.2, 0.2),   beta <- beta (1 + e n / horizon),

    where KL is the last rollout's mean KL per answer and n the answers it had. Scalars in and out."""
    error = min(max(kl / target - 1, -0.2), 0.2)
    return kl_coef * (1 + error * n_steps / horizon)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al., 2016, eq. 16) by the backward recursion

        delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lam A_{t+1},   returns R_t = A_t + V_t,

    with V and A zero past the last answer token (the episode ends there). lam = 1 gives discounted returns minus
    values; lam = 0 the one-step TD error.

    Shapes: rewards, values, mask (B, T), mask right-padded -> (advantages, returns), both (B, T), 0 on padding.
    """
    rewards, values = rewards * mask, values * mask  # padding then adds nothing to the recursion
    advantages = torch.zeros_like(rewards)
    next_value = next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages * mask, (advantages + values) * mask


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_range: float) -> tuple[torch.Tensor, dict]:
    """The negated clipped surrogate objective (Schulman et al., 2017, eq. 7), averaged over answer tokens:

        L = -E_t[ min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) ],   rho_t = exp(logp_t - old_logp_t),

    and diagnostics (scalars): the clip fraction (share of tokens where the clipped term is the smaller one: their
    gradient is zero), the k3 estimate of KL(old || new), E_t[(rho_t - 1) - log rho_t] (Schulman, "Approximating KL
    divergence", 2020), and the mean and max ratio.

    Shapes: logp, old_logp, advantages, mask (B, T) -> (loss, diagnostics).
    """
    log_ratio = (logp - old_logp) * mask  # masked before exp: padding could overflow to inf, and 0 * inf is NaN
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    ratio, log_ratio = ratio.detach(), log_ratio.detach()
    return loss, {"clip_fraction": masked_mean((clipped > unclipped).float(), mask),
                  "approx_kl": masked_mean(ratio - 1 - log_ratio, mask),
                  "ratio_mean": masked_mean(ratio, mask), "ratio_max": ratio[mask.bool()].max()}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (as in OpenAI baselines' PPO2 and Ziegler et al., 2019):

        L_V = 1/2 E_t[ max((V_t - R_t)^2, (old_V_t + clip(V_t - old_V_t, -eps_v, eps_v) - R_t)^2) ],

    and the value clip fraction: the share of tokens where the clipped term is the larger one (no gradient).

    Shapes: values, old_values, returns, mask (B, T) -> (loss, clip_fraction), scalars.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    return loss, masked_mean((clipped_loss > unclipped_loss).float(), mask)
