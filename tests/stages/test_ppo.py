"""PPO: GAE, the clipped losses, the KL-penalized rewards and the KL controller on hand-computed values; behavioural
tests on the tiny model that fail when learning is broken (a flipped policy-gradient sign, the KL penalty's arguments
swapped, the sampling temperature or config lost, the missing-EOS penalty or the critic's start wrong); a smoke run
whose adapter loads back, whose reference is the SFT model, and which is deterministic and resumes exactly. The slow
tier trains with the oracle as reward and checks the score rises and that a higher kl_coef holds the KL lower."""
import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch

from rlhf import config, generation, models, scoring, tokenize, train
from rlhf.methods import ppo
from rlhf.ppo import functional, rollouts
from rlhf.ppo.critic import critic_from_reward_model, policy_with_value_head
from tests.conftest import TINY, repo_section, run_stage, write_params
from rlhf.paths import layout

# Two answers of 3 and 2 tokens; the second row's last column is padding.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


# -- GAE -------------------------------------------------------------------------------------------------------------

REWARDS = torch.tensor([[1.0, 0.0, 2.0], [0.5, 3.0, 7.0]])  # 7 and 9 sit on padding: they must not count
VALUES = torch.tensor([[0.5, 1.0, 1.0], [1.0, 2.0, 9.0]])


def test_gae_hand_computed():
    """gamma = lam = 0.5, so gamma * lam = 0.25; V = 0 past the last token.

    row 1: t=2  delta = 2 + 0.5*0 - 1   = 1     A = 1
           t=1  delta = 0 + 0.5*1 - 1   = -0.5  A = -0.5 + 0.25*1     = -0.25
           t=0  delta = 1 + 0.5*1 - 0.5 = 1     A = 1 + 0.25*(-0.25)  = 0.9375
           returns = A + V = 1.4375, 0.75, 2
    row 2: t=1  delta = 3 + 0 - 2       = 1     A = 1
           t=0  delta = 0.5 + 0.5*2 - 1 = 0.5   A = 0.5 + 0.25*1      = 0.75
           returns = 1.75, 3; padding gives 0.
    """
    advantages, returns = functional.gae(REWARDS, VALUES, MASK, gamma=0.5, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[0.9375, -0.25, 1.0], [0.75, 1.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[1.4375, 0.75, 2.0], [1.75, 3.0, 0.0]]))


def test_gae_lambda_one_is_discounted_return_minus_value():
    """lam = 1: A_t = sum_k gamma^k r_{t+k} - V_t. With gamma = 0.5:
    row 1: G = (1 + 0.5*0 + 0.25*2, 0 + 0.5*2, 2) = (1.5, 1, 2), A = G - V = (1, 0, 1)
    row 2: G = (0.5 + 0.5*3, 3) = (2, 3), A = (1, 1); returns = G."""
    advantages, returns = functional.gae(REWARDS, VALUES, MASK, gamma=0.5, lam=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[1.5, 1.0, 2.0], [2.0, 3.0, 0.0]]))


def test_gae_lambda_zero_is_one_step_td():
    """lam = 0: A_t = r_t + gamma V_{t+1} - V_t. With gamma = 0.5:
    row 1: (1 + 0.5 - 0.5, 0 + 0.5 - 1, 2 + 0 - 1) = (1, -0.5, 1); row 2: (0.5 + 1 - 1, 3 + 0 - 2) = (0.5, 1)."""
    advantages, _ = functional.gae(REWARDS, VALUES, MASK, gamma=0.5, lam=0.0)
    torch.testing.assert_close(advantages, torch.tensor([[1.0, -0.5, 1.0], [0.5, 1.0, 0.0]]))


def test_gae_gamma_one_lambda_one_gives_reward_to_go():
    """gamma = lam = 1: returns are the plain sums of the rewards still to come (row 1: 3, 2, 2; row 2: 3.5, 3)."""
    _, returns = functional.gae(REWARDS, VALUES, MASK, gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, torch.tensor([[3.0, 2.0, 2.0], [3.5, 3.0, 0.0]]))


# -- losses ----------------------------------------------------------------------------------------------------------

def test_policy_loss_hand_computed_with_clipping():
    """clip_range 0.2, so ratios are clipped to [0.8, 1.2]; per token max(-A rho, -A clip(rho)):

    rho 1.1, A  1: max(-1.1, -1.1) = -1.1   inside the range           gradient -A rho / 5 = -0.22
    rho 1.5, A  2: max(-3.0, -2.4) = -2.4   clipped                    gradient 0
    rho 0.5, A -1: max( 0.5,  0.8) =  0.8   clipped                    gradient 0
    rho 0.5, A  1: max(-0.5, -0.8) = -0.5   outside, but unclipped wins (pessimistic bound)  gradient -0.1
    rho 1.5, A -1: max( 1.5,  1.2) =  1.5   outside, but unclipped wins                     gradient +0.3
    loss = (-1.1 - 2.4 + 0.8 - 0.5 + 1.5) / 5 = -0.34; clip fraction 2/5. Padding has a wild ratio; it must not count.
    Diagnostics over the 5 answer tokens: ratio mean 5.1 / 5 = 1.02, max 1.5 (not the padding's 100); k3 KL
    sum(rho - 1 - log rho) / 5 = (0.0046898 + 2 * 0.0945349 + 2 * 0.1931472) / 5 = 0.1160108.
    Catches a flipped sign of the loss (the values and the gradient change sign).
    """
    old_logp = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.1, 1.5, 0.5], [0.5, 1.5, 100.0]])).requires_grad_()
    advantages = torch.tensor([[1.0, 2.0, -1.0], [1.0, -1.0, 5.0]])
    loss, stats = functional.policy_loss(logp, old_logp, advantages, MASK, clip_range=0.2)
    assert loss.item() == pytest.approx(-0.34)
    assert stats["clip_fraction"].item() == pytest.approx(0.4)
    assert stats["ratio_mean"].item() == pytest.approx(1.02) and stats["ratio_max"].item() == pytest.approx(1.5)
    assert stats["approx_kl"].item() == pytest.approx(0.1160108, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.22, 0.0, 0.0], [-0.1, 0.3, 0.0]]))


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    advantages = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 5.0, 6.0]])
    loss, stats = functional.policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), advantages, MASK, 0.2)
    assert loss.item() == pytest.approx(-(1 + 2 + 3 - 4 + 5) / 5) and stats["clip_fraction"].item() == 0
    assert stats["approx_kl"].item() == 0 and stats["ratio_mean"].item() == 1


def test_policy_loss_ignores_overflowing_padding():
    """Padding holds whatever the forward pass gave: a log-ratio of 1000 there overflows exp() to inf, and
    0 * inf = NaN would poison the mean and the gradient unless the log-ratio is masked before the exponential."""
    logp = torch.tensor([[0.1, 0.0, -0.1], [0.0, 0.0, 1000.0]], requires_grad=True)
    advantages = torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, stats = functional.policy_loss(logp, torch.zeros(2, 3), advantages, MASK, 0.2)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logp.grad).all()
    assert all(math.isfinite(v.item()) for v in stats.values()) and stats["ratio_max"].item() < 2


def test_value_loss_hand_computed_with_clipping():
    """clip_range_value 0.2; per token max((V - R)^2, (old + clip(V - old, -0.2, 0.2) - R)^2):

    old 1, V 1.1,  R 2: max(0.81, (1.1 - 2)^2 = 0.81) = 0.81   inside the range
    old 1, V 1.5,  R 2: max(0.25, (1.2 - 2)^2 = 0.64) = 0.64   clipped one is worse: it counts
    old 1, V 1.5,  R 1: max(0.25, (1.2 - 1)^2 = 0.04) = 0.25
    old 0, V -1,   R 0: max(1.00, (-0.2)^2    = 0.04) = 1
    loss = 0.5 * (0.81 + 0.64 + 0.25 + 1) / 4 = 0.3375 (padding ignored); the clipped term is the larger one on the
    second token only: value clip fraction 1/4."""
    values = torch.tensor([[1.1, 1.5, 1.5], [-1.0, 0.0, 50.0]])
    old_values = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, clip_fraction = functional.value_loss(values, old_values, returns, mask, 0.2)
    assert loss.item() == pytest.approx(0.3375) and clip_fraction.item() == pytest.approx(0.25)


def test_kl_penalty_rewards_hand_computed():
    """kl_coef 0.1; r_t = -0.1 (logp - ref_logp), plus the score on the last answer token:
    row 1: logp - ref = (0.5, -1, 0)  -> (-0.05, 0.1, 0 + 2)  = (-0.05, 0.1, 2)
    row 2: logp - ref = (1, -2, pad)  -> (-0.1, 0.2 - 1, 0)   = (-0.1, -0.8, 0)"""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -3.0, 0.0]])
    ref_logp = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, 5.0]])
    rewards = functional.kl_penalty_rewards(torch.tensor([2.0, -1.0]), logp, ref_logp, MASK, kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 2.0], [-0.1, -0.8, 0.0]]))


def test_adaptive_kl_coef_hand_computed():
    """Ziegler et al.: e = clip(KL / target - 1, -0.2, 0.2), beta <- beta (1 + e n / horizon); n = 64, horizon 640.
    KL 3, target 2: e = 0.5 -> 0.2, beta 0.1 * (1 + 0.02) = 0.102.  KL 1.8: e = -0.1, beta 0.1 * 0.99 = 0.099.
    KL 0: e = -1 -> -0.2, beta 0.098.  On target: unchanged."""
    assert functional.adaptive_kl_coef(0.1, 3.0, 2.0, 640, 64) == pytest.approx(0.102)
    assert functional.adaptive_kl_coef(0.1, 1.8, 2.0, 640, 64) == pytest.approx(0.099)
    assert functional.adaptive_kl_coef(0.1, 0.0, 2.0, 640, 64) == pytest.approx(0.098)
    assert functional.adaptive_kl_coef(0.1, 2.0, 2.0, 640, 64) == pytest.approx(0.1)


# -- statistics ------------------------------------------------------------------------------------------------------

def test_masked_whiten_has_mean_zero_and_std_one_on_the_mask():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)) * 3 + 5
    mask = (torch.arange(6)[None] < torch.tensor([[6], [2], [4], [1]])).float()
    white = functional.masked_whiten(x, mask)
    kept = white[mask.bool()]
    assert kept.mean().item() == pytest.approx(0, abs=1e-6)
    assert kept.std(unbiased=False).item() == pytest.approx(1, abs=1e-5)
    assert (white[~mask.bool()] == 0).all()
    assert functional.masked_mean(x, mask).item() == pytest.approx(x[mask.bool()].mean().item())


def test_explained_variance():
    """returns 1, 2, 3, 4 (variance 1.25); values 1, 2, 3, 3 leave residuals 0, 0, 0, 1 (variance 3/16):
    1 - 0.1875 / 1.25 = 0.85."""
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    assert functional.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert functional.explained_variance(torch.full_like(returns, 2.5), returns, mask).item() == pytest.approx(0.0)
    values = torch.tensor([[1.0, 2.0, 3.0, 3.0, -7.0]])
    assert functional.explained_variance(values, returns, mask).item() == pytest.approx(0.85)


def test_entropy_from_logits():
    """Uniform over 4: log 4. Logits (0, log 3): p = (1/4, 3/4), H = -(1/4 log 1/4 + 3/4 log 3/4)."""
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3), -1e9, -1e9]])  # -1e9: probability 0
    expected = [math.log(4), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    assert functional.entropy_from_logits(logits).tolist() == pytest.approx(expected)


def test_rollout_tensors_line_answers_up():
    """Prompt (5, 6, 7) + answer (8, 9): logits at position 2 predict the answer's first token, 8."""
    batch = rollouts.rollout_tensors([[5, 6, 7], [5]], [[8, 9], [10, 11, 12]], pad_id=0)
    assert batch.ids.tolist() == [[5, 6, 7, 8, 9], [5, 10, 11, 12, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch.starts.tolist() == [2, 0]
    assert batch.mask.tolist() == [[1, 1, 0], [1, 1, 1]]


class LastTokenScorer(torch.nn.Module):
    """A stand-in reward model: the score of a sequence is its last non-padding token id."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        last = input_ids.gather(1, attention_mask.sum(1, keepdim=True) - 1)
        return SimpleNamespace(logits=last.float())


def test_reward_function_scores_ended_answers_with_the_turn_end():
    """End of turn 2, then the template writes 9. Prompt (1, 2) + answer (5, 2) ended: scored as (1, 2, 5, 2, 9),
    score 9. Prompt (3) + answer (6, 7) was cut off: scored as it is, score 7. Normalized with mean 1, std 2:
    (9-1)/2 = 4, (7-1)/2 = 3."""
    tokenizer = SimpleNamespace(pad_token_id=0)
    score = scoring.reward_function(LastTokenScorer(), [{"score_mean": 1.0, "score_std": 2.0}], tokenizer, (2, [9]), 8)
    raw, normalized, std, members = score([[1, 2], [3]], [[5, 2], [6, 7]])
    assert raw.tolist() == [9, 7] and normalized.tolist() == [4, 3]
    assert std.tolist() == [0, 0] and members.tolist() == [[4], [3]]


# -- behaviour on the tiny model: rollout and update ----------------------------------------------------------------

def tiny_policy(root, **overrides):
    """(params, tokenizer, training prompts, policy, value head, optimizer) on the tiny trained models."""
    params = config.load(root / "params.yaml")
    params = dataclasses.replace(params, ppo=dataclasses.replace(params.ppo, **(SMOKE | overrides)))
    _, lora, _ = train.resolve(params, params.sft, None)
    model, value_head = policy_with_value_head(params, root / "models/base", root / "models/sft", lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad] + list(value_head.parameters()),
                                  lr=params.ppo.learning_rate, weight_decay=0.0)
    prompts = tokenize.load_split(root / "data/tokenized", "train", 10**9)["prompt_ids"]
    return params, models.tokenizer(root / "models/base"), prompts, model, value_head, optimizer


def oracle_reward(tokenizer, scale: float = 1.0):
    """A reward function that scores answers with the built-in task's oracle (raw and `scale` times it)."""
    def score(prompts, answers):
        raw = torch.tensor(generation.oracle_scores("sentiment", prompts, answers, tokenizer))
        return raw, raw * scale
    return score


def token_reward(prompts, answers):
    """A reward the tiny model's answers differ in (the oracle scores nearly all of them 0): their mean token id."""
    raw = torch.tensor([sum(a) / len(a) / 100 for a in answers])
    return raw, raw


def zero_reward(prompts, answers):
    return torch.zeros(len(prompts)), torch.zeros(len(prompts))


def clipped_surrogate(logp, old_logp, advantages, mask, clip_range):
    """E_t[min(rho A, clip(rho) A)], written out here apart from functional.policy_loss, so a sign error there shows."""
    ratio = torch.exp((logp - old_logp) * mask)
    surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * advantages)
    return ((surrogate * mask).sum() / mask.sum()).item()


def test_one_update_raises_the_clipped_surrogate_on_its_own_batch(tiny_trained):
    """One epoch of minibatch steps on a scored rollout must raise the clipped surrogate objective on that same batch
    (it is 0 before: whitened advantages, ratio 1). Catches a flipped sign of the policy-gradient loss, in
    policy_loss or where update() adds it up."""
    params, tokenizer, prompts, model, value_head, optimizer = tiny_policy(tiny_trained, ppo_epochs=1,
                                                                           learning_rate=1e-3)
    section = params.ppo
    experience, _ = rollouts.rollout(model, None, value_head, token_reward, tokenizer, prompts[:16], section,
                                     section.kl_coef, seed=1)
    args = (experience.advantages, experience.mask, section.clip_range)
    assert clipped_surrogate(experience.logp, experience.logp, *args) == pytest.approx(0, abs=1e-6)
    ppo.update(model, None, value_head, optimizer, experience, section, seed=1)
    with torch.no_grad():
        logp, _, _ = rollouts.token_stats(model, None, experience.ids, experience.attention_mask,
                                          experience.starts, experience.mask.shape[1], section.temperature)
    assert clipped_surrogate(logp, experience.logp, *args) > 0.01


def test_kl_penalty_pulls_the_policy_back_to_the_reference(tiny_trained):
    """A policy pushed off the SFT model, trained with reward 0 and only the KL penalty, must come back: the KL of
    its fresh samples falls. Catches logp and ref_logp swapped in the KL penalty (in kl_penalty_rewards or where
    rollout() calls it; the KL would then grow) and a flipped policy-gradient sign."""
    params, tokenizer, prompts, model, value_head, optimizer = tiny_policy(tiny_trained, learning_rate=1e-2)
    torch.manual_seed(0)
    with torch.no_grad():  # a push of 0.1 gives a KL of about 6 on the held-out-split tiny models (0.3: about 7, and
        for name, weight in model.named_parameters():  # 5 iterations at this learning rate do not bring it back)
            if "lora_B" in name:
                weight.normal_(0, 0.1)
    kls = []
    for iteration in range(1, 6):
        batch = prompts[(iteration - 1) * 8: iteration * 8]
        experience, metrics = rollouts.rollout(model, None, value_head, zero_reward, tokenizer, batch, params.ppo,
                                               kl_coef=1.0, seed=iteration)
        ppo.update(model, None, value_head, optimizer, experience, params.ppo, seed=iteration)
        kls.append(metrics.kl)
    assert kls[0] > 1 and kls[-1] < 0.5 * kls[0], kls


def test_old_logprobs_are_the_samplers(tiny_trained):
    """At temperature 0.7, with a repetition penalty in the model's own generation config, the log-probs rollout()
    stores as old log-probs equal those of the distribution generate() sampled each token from (its processed
    scores). Catches the temperature division dropped from token_stats, and sampling settings leaking in from the
    model's generation config (generate() would otherwise apply that penalty)."""
    params, tokenizer, prompts, model, value_head, _ = tiny_policy(tiny_trained, temperature=0.7)
    inner = model.get_base_model()
    inner.generation_config.repetition_penalty = 3.0
    sampled, generate = {}, inner.generate

    def recording_generate(*args, **kwargs):
        out = generate(*args, **kwargs, output_scores=True, return_dict_in_generate=True)
        sampled["scores"], sampled["sequences"] = out.scores, out.sequences
        return out.sequences

    inner.generate = recording_generate
    experience, _ = rollouts.rollout(model, None, value_head, zero_reward, tokenizer, prompts[:8], params.ppo,
                                     params.ppo.kl_coef, seed=3)
    width = experience.mask.shape[1]
    new_tokens = sampled["sequences"][:, -len(sampled["scores"]):][:, :width]
    scores = torch.stack(sampled["scores"], 1)[:, :width].float()
    sampler_logp = torch.log_softmax(scores, -1).gather(-1, new_tokens[..., None]).squeeze(-1)
    mask = experience.mask.bool()
    assert mask.sum() > 8
    torch.testing.assert_close(experience.logp[mask], sampler_logp[mask], atol=1e-4, rtol=1e-4)


def test_missing_eos_penalty_lowers_cut_off_answers_only(tiny_trained):
    """Answers cut off at max_new_tokens get the normalized score minus the penalty; ended ones keep theirs. With a
    zero reward, no KL penalty, values 0 and no whitening, each answer's first return is its penalized score."""
    params, tokenizer, prompts, model, value_head, _ = tiny_policy(tiny_trained, missing_eos_penalty=2.0,
                                                                   whiten_advantages=False, lam=1.0)
    experience, metrics = rollouts.rollout(model, None, value_head, zero_reward, tokenizer, prompts[:16], params.ppo,
                                           kl_coef=0.0, seed=5)  # 4 of these 16 answers end within 8 tokens
    last = experience.ids.gather(1, experience.attention_mask.sum(1, keepdim=True) - 1).squeeze(1)
    ended = last == tokenizer.eos_token_id
    assert 0 < metrics.ended_fraction < 1 and metrics.ended_fraction == pytest.approx(ended.float().mean())
    torch.testing.assert_close(experience.returns[:, 0], torch.where(ended, 0.0, -2.0))
    assert metrics.score_normalized == pytest.approx(-2.0 * (1 - metrics.ended_fraction))


def test_separate_critic_starts_at_the_normalized_reward(tiny_trained):
    """The separate critic is the reward model with its head rescaled: before training, its value at each position
    equals the reward model's normalized score of the sequence up to that position. Catches a critic that reads
    other hidden states than the reward head did, or skips the normalization. It shares the reward model's layers
    (one copy loaded): with the critic's adapter off, the reward model still scores as before, whatever the critic
    learned."""
    root = tiny_trained
    params = config.load(root / "params.yaml")
    _, lora, _ = train.resolve(params, params.sft, None)
    scorer, stats = models.reward_model(root / "models/base", root / "models/sft", root / "models/reward", params.model)
    stats = [{**stats[0], "score_mean": 0.3, "score_std": 2.0}]
    ids = torch.tensor([[5, 17, 23, 42, 7, 99, 3]])
    prefixes = [ids[0, : p + 1].tolist() for p in range(2, 6)]  # the state before answer token t sees ids[: t + 1]
    raw = scoring.reward_scores(scorer, prefixes, pad_id=0)
    trunk = scorer.get_base_model().model
    critic, head, scorer, stats = critic_from_reward_model(params, scorer, lora, stats)
    assert critic.get_base_model() is trunk and scorer.model is trunk  # no second copy of the weights
    assert "adapter" not in stats[0]  # the merged scorer has none to switch to
    with torch.no_grad():
        values = rollouts.critic_values(critic, head, ids, torch.ones_like(ids), torch.tensor([2]), 4)
    torch.testing.assert_close(values[0], (raw - 0.3) / 2.0, atol=1e-4, rtol=1e-4)

    with torch.no_grad():  # as if the critic had trained: its adapter now changes the shared layers' output
        for name, weight in critic.named_parameters():
            if "lora_B" in name:
                weight.fill_(0.05)
    with critic.disable_adapter():
        torch.testing.assert_close(scoring.reward_scores(scorer, prefixes, pad_id=0), raw, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(scoring.reward_scores(scorer, prefixes, pad_id=0), raw, atol=1e-3)


def train_iterations(root, iterations: int, reward_fn, **overrides) -> list[rollouts.RolloutStats]:
    """Rollout and update `iterations` times on the tiny model; each iteration's rollout metrics (fresh samples)."""
    params, tokenizer, prompts, model, value_head, optimizer = tiny_policy(root, **overrides)
    history = []
    for iteration in range(1, iterations + 1):
        batch = prompts[(iteration - 1) * 8: iteration * 8]
        experience, metrics = rollouts.rollout(model, None, value_head, reward_fn, tokenizer, batch, params.ppo,
                                               params.ppo.kl_coef, seed=iteration)
        ppo.update(model, None, value_head, optimizer, experience, params.ppo, seed=iteration)
        history.append(metrics)
    return history


# -- smoke run on the tiny model -------------------------------------------------------------------------------------

SMOKE = {"num_iterations": 3, "rollout_batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 2, "max_new_tokens": 8,
         "save_steps": 2, "learning_rate": 1e-2}


def run_ppo(root, name: str, checkpoints: str | None = None, **overrides):
    params = config.load(root / "params.yaml")
    params = dataclasses.replace(params, ppo=dataclasses.replace(params.ppo, **(SMOKE | overrides)))
    paths = layout().under(root).replace(align_checkpoints=root / "checkpoints" / (checkpoints or name),
                                         align_live=root / "dvclive" / name)
    metrics, model = ppo.run(params, paths, root / name)
    return params, metrics, model


@pytest.fixture(scope="module")
def smoke(tiny_trained):
    return tiny_trained, *run_ppo(tiny_trained, "ppo-smoke")


def test_smoke_metrics_and_outputs(smoke):
    root, params, metrics, model = smoke
    names = ("score", "score_normalized", "kl", "kl_coef", "entropy", "policy_loss", "value_loss", "clip_fraction",
             "explained_variance", "response_length", "ended_fraction", "approx_kl", "ratio_mean", "ratio_max",
             "value_clip_fraction")
    assert all(math.isfinite(metrics[n]) for n in names), metrics
    assert metrics["kl_coef"] == params.ppo.kl_coef and metrics["ratio_max"] >= metrics["ratio_mean"] > 0
    out = root / "ppo-smoke"
    for name in ("adapter_model.safetensors", "adapter_config.json", ppo.VALUE_HEAD_FILE, "tokenizer.json"):
        assert (out / name).exists(), name
    checkpoint = root / "checkpoints/ppo-smoke/iter-2"
    assert (checkpoint / "adapter_model.safetensors").exists() and (checkpoint / ppo.VALUE_HEAD_FILE).exists()
    assert torch.load(checkpoint / ppo.TRAINER_STATE_FILE)["iteration"] == 2
    assert not (root / "checkpoints/ppo-smoke/iter-3").exists()  # save_steps 2
    for name in ("kl", "approx_kl", "value_clip_fraction", "ratio_max"):  # diagnostics sit with the curves
        assert (root / f"dvclive/ppo-smoke/plots/metrics/{name}.tsv").read_text().count("\n") == 1 + 3, name
    # the curves' x axis is the optimizer step, as for the Trainer-based methods: ppo_epochs * ceil(rollouts /
    # mini batch) updates per iteration, so iterations 1, 2, 3 sit at that multiple
    updates = params.ppo.ppo_epochs * -(-params.ppo.rollout_batch_size // params.ppo.mini_batch_size)
    steps = [int(line.split("\t")[0]) for line in
             (root / "dvclive/ppo-smoke/plots/metrics/kl.tsv").read_text().splitlines()[1:]]
    assert updates > 1 and steps == [updates, 2 * updates, 3 * updates]
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # training moved the adapter off its zero init


def test_adapter_loads_back_with_same_logits(smoke):
    from peft import PeftModel

    root, params, _, model = smoke
    loaded = PeftModel.from_pretrained(
        models.sft_merged(root / "models/base", root / "models/sft", repo_section("model")), root / "ppo-smoke").eval()
    ids = torch.tensor([[5, 17, 23, 42, 7, 99]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_reference_is_the_sft_model(smoke):
    """The adapter disabled gives the SFT model's log-probs; enabled, the trained policy's differ."""
    root, params, _, model = smoke
    sft_model = models.sft_merged(root / "models/base", root / "models/sft", repo_section("model")).eval()
    ids, attention_mask = torch.tensor([[5, 17, 23, 42, 7, 99, 3]]), torch.ones(1, 7, dtype=torch.long)
    args = (ids, attention_mask, torch.tensor([2]), 4, 1.0)
    with torch.no_grad():
        with model.disable_adapter():
            ref_logp, _, _ = rollouts.token_stats(model, None, *args)
        sft_logp, _, _ = rollouts.token_stats(sft_model, None, *args)
        policy_logp, _, _ = rollouts.token_stats(model, None, *args)
    torch.testing.assert_close(ref_logp, sft_logp)
    assert not torch.allclose(policy_logp, sft_logp)


def test_runs_are_deterministic(smoke):
    root, _, metrics, _ = smoke
    _, again, _ = run_ppo(root, "ppo-again")
    metrics, again = dict(metrics), dict(again)
    metrics.pop("train_seconds"), again.pop("train_seconds")
    assert metrics == again


def test_align_stage_runs_ppo(tiny_trained, tmp_path):
    """`method: ppo` through the align stage, in its own folder sharing the tiny data and models."""
    for name in ("data", "models/base", "models/sft", "models/reward"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(tiny_trained / name)
    write_params(tmp_path / "params.yaml", {**TINY, "method": "ppo", **{f"ppo.{k}": v for k, v in SMOKE.items()}})
    run_stage(tmp_path, "align", "--tokenized", "data/tokenized", "--base", "models/base", "--sft", "models/sft",
              "--reward", "models/reward", "--reference", "data/reference", "--policy", "models/policy",
              "--align-metrics", "metrics/align.json", "--align-live", "dvclive/align", "--align-checkpoints", "checkpoints/align")
    metrics = json.loads((tmp_path / "metrics/align.json").read_text())
    assert metrics["method"] == "ppo"
    assert metrics["oracle_gain"] == pytest.approx(metrics["oracle_policy"] - metrics["oracle_sft"], abs=1e-5)
    model = models.policy(tmp_path / "models/base", tmp_path / "models/sft", tmp_path / "models/policy", repo_section("model"))
    assert (tmp_path / "models/policy" / ppo.VALUE_HEAD_FILE).exists()
    ids = torch.tensor([[5, 17, 23, 42, 7]])
    with torch.no_grad():
        with model.disable_adapter():
            without = model(ids).logits
        assert not torch.allclose(model(ids).logits, without)  # the saved adapter is the trained one


def test_resume_from_a_checkpoint_equals_the_whole_run(smoke):
    """The smoke run (3 iterations) left a complete checkpoint at iteration 2. A run with the same params resumes
    there, skips a half-written iter-3, and ends with the whole run's adapter, value head, metrics and curves."""
    root, params, metrics, model = smoke
    half_written = root / "checkpoints/ppo-smoke/iter-3"
    half_written.mkdir()
    (half_written / "adapter_model.safetensors").write_bytes(b"cut off")
    _, resumed, _ = run_ppo(root, "ppo-resumed", checkpoints="ppo-smoke")
    assert {**resumed, "train_seconds": 0} == {**metrics, "train_seconds": 0}
    for name in ("adapter_model.safetensors", ppo.VALUE_HEAD_FILE):
        assert (root / "ppo-resumed" / name).read_bytes() == (root / "ppo-smoke" / name).read_bytes(), name
    curve = "dvclive/{}/plots/metrics/kl.tsv"
    assert (root / curve.format("ppo-resumed")).read_text() == (root / curve.format("ppo-smoke")).read_text()
    # Other params must start over, not resume: iteration 1 then samples as the smoke run did (same start and seed),
    # iteration 2 differs (another learning rate moved the policy). Resumed, both rows would be the smoke run's.
    run_ppo(root, "ppo-other", checkpoints="ppo-smoke", learning_rate=2e-2)
    smoke_rows, other_rows = ((root / f"dvclive/{name}/plots/metrics/score.tsv").read_text().splitlines()
                              for name in ("ppo-smoke", "ppo-other"))
    assert other_rows[1] == smoke_rows[1] and other_rows[2] != smoke_rows[2]


def tsv_column(path) -> list[float]:
    return [float(line.split("\t")[-1]) for line in path.read_text().splitlines()[1:]]


OPTIONS = {"critic": "separate", "adap_kl_ctrl": True, "target": 0.01, "horizon": 8,
           "reward_normalization": "sft_samples", "missing_eos_penalty": 1.0}


