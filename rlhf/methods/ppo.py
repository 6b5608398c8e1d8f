"""PPO (Schulman et al., 2017) for language models, as in Ouyang et al. (2022): sample answers, score them with the
trained reward model, penalize each token's KL to the SFT reference, estimate advantages with GAE (Schulman et al.,
2016) from a value head, and take a few clipped-surrogate epochs over the rollouts. TRL 1.x has no PPOTrainer, so this
is plain PyTorch + PEFT, one loop in `run`.

The policy is the SFT model plus a new LoRA adapter; with the adapter disabled the same weights are the reference, so
no second copy is loaded. The critic (`ppo.critic`) is either a linear value head on the policy's last hidden states,
trained jointly (`shared`: its gradient reaches the policy's adapter too), or a separate model initialised from the
reward model, with its own LoRA adapter, its score head as value head, and its own gradient clipping (`separate`, as
in Ziegler et al., 2019 and Huang et al., 2024, "The N+ implementation details of RLHF with PPO"). Tensors of one
rollout are (B, T): B answers, T = the longest answer's tokens, right-padded; `mask` is 1 on answer tokens (the EOS
included) and 0 on padding. The reward model scores prompt + answer + the chat template's turn end (see
`rlhf.scoring.reward_function`), as it saw answers in training.
"""
import contextlib
import dataclasses
import time
from pathlib import Path

import torch

from rlhf import base, generation, models, resuming, scoring, tokenize, train

VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_DIR = "critic"  # the separate critic's LoRA adapter, next to the value head
NORMALIZATION_PROMPTS = 256  # training prompts answered by SFT for reward_normalization: sft_samples (std within ~5%)
TRAINER_STATE_FILE = "trainer_state.pt"  # optimizer state and iteration number, in checkpoints only


# -- the math: pure functions on tensors ----------------------------------------------------------------------------

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

    where KL is the last rollout's mean KL per answer and n the answers it had."""
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


# -- the models: rollouts as tensors and per-token forward passes ---------------------------------------------------

def rollout_tensors(prompts: list[list[int]], answers: list[list[int]], pad_id: int) -> dict:
    """prompt + answer ids right-padded (B, L), their attention mask (B, L), the position in the shifted logits that
    predicts each answer's first token (B,), and the answer-token mask (B, T)."""
    ids, attention_mask = scoring.pad_right([p + a for p, a in zip(prompts, answers)], pad_id)
    lengths = torch.tensor([len(a) for a in answers])
    mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).float()
    starts = torch.tensor([len(p) - 1 for p in prompts])  # logits at position t predict token t + 1
    return {"ids": ids, "attention_mask": attention_mask, "starts": starts, "mask": mask}


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
    return logp, values, entropy_from_logits(logits.detach())


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
            seed: int):
    """Sample answers, score them, and compute everything the update needs: (experience dict of tensors, metrics)."""
    device = next(model.parameters()).device
    answers = generation.generate(model, prompts, tokenizer, section.max_new_tokens, section.temperature, seed=seed)
    score, normalized = reward_fn(prompts, answers)
    stops = generation.stop_ids(tokenizer)  # the template's end of turn (and EOS): what an ended answer ends with
    ended = torch.tensor([bool(a) and a[-1] in stops for a in answers], device=device)
    normalized = normalized.to(device)
    if section.missing_eos_penalty is not None:  # cut off at max_new_tokens: the reward model never saw such an end
        normalized = torch.where(ended, normalized, normalized - section.missing_eos_penalty)
    batch = {k: v.to(device) for k, v in rollout_tensors(prompts, answers, tokenizer.pad_token_id).items()}
    width = batch["mask"].shape[1]

    parts = []  # forward passes in chunks of mini_batch_size, to bound memory as the update does
    for chunk in torch.arange(len(prompts), device=device).split(section.mini_batch_size):
        args = (batch["ids"][chunk], batch["attention_mask"][chunk], batch["starts"][chunk], width)
        logp, values, entropy = forward(model, critic, value_head, *args, section.temperature)
        with model.disable_adapter():
            ref_logp, _, _ = token_stats(model, None, *args, section.temperature)
        parts.append((logp, values, entropy, ref_logp))
    logp, values, entropy, ref_logp = (torch.cat(p) for p in zip(*parts))

    mask = batch["mask"]
    rewards = kl_penalty_rewards(normalized, logp, ref_logp, mask, kl_coef)
    advantages, returns = gae(rewards, values, mask, section.gamma, section.lam)
    if section.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    experience = {**batch, "logp": logp, "values": values, "advantages": advantages, "returns": returns}
    metrics = {
        "score": score.mean().item(),
        "score_normalized": normalized.mean().item(),  # the missing-EOS penalty included
        "kl": ((logp - ref_logp) * mask).sum(1).mean().item(),  # per answer, summed over its tokens
        "kl_coef": kl_coef,
        "entropy": masked_mean(entropy, mask).item(),
        "explained_variance": explained_variance(values, returns, mask).item(),
        "response_length": mask.sum(1).mean().item(),
        "ended_fraction": ended.float().mean().item(),
    }
    return experience, metrics


def update(model, critic, value_head, optimizer, experience: dict, section, seed: int) -> dict:
    """`ppo_epochs` passes over the rollouts in shuffled minibatches, each optimizer parameter group's gradient
    clipped on its own; returns the mean losses and diagnostics."""
    order = torch.Generator().manual_seed(seed)  # per-iteration seed: a resumed run shuffles the same way
    width = experience["mask"].shape[1]
    logged = {}
    for _ in range(section.ppo_epochs):
        for index in torch.randperm(len(experience["ids"]), generator=order).split(section.mini_batch_size):
            mb = {k: v[index.to(v.device)] for k, v in experience.items()}
            logp, values, _ = forward(model, critic, value_head, mb["ids"], mb["attention_mask"], mb["starts"],
                                      width, section.temperature)
            p_loss, stats = policy_loss(logp, mb["logp"], mb["advantages"], mb["mask"], section.clip_range)
            v_loss, value_clip = value_loss(values, mb["values"], mb["returns"], mb["mask"], section.clip_range_value)
            optimizer.zero_grad()
            (p_loss + section.vf_coef * v_loss).backward()
            for group in optimizer.param_groups:
                torch.nn.utils.clip_grad_norm_(group["params"], section.max_grad_norm)
            optimizer.step()
            stats |= {"policy_loss": p_loss, "value_loss": v_loss, "value_clip_fraction": value_clip}
            for name, value in stats.items():
                logged.setdefault(name, []).append(value.item())
    return {name: max(v) if name == "ratio_max" else sum(v) / len(v) for name, v in logged.items()}


def save(folder: Path, model, critic, value_head, tokenizer=None) -> None:
    """The adapter, the value head, the separate critic's adapter if any, and (for the final output) the tokenizer."""
    from safetensors.torch import save_file

    model.save_pretrained(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()},
              Path(folder) / VALUE_HEAD_FILE)
    if critic is not None:
        critic.save_pretrained(Path(folder) / CRITIC_DIR)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def save_checkpoint(folder: Path, model, critic, value_head, optimizer, state: dict) -> None:
    """Everything a resumed run needs: weights, optimizer state, and `state` (iteration, KL coefficient, logged
    metrics); marked complete last, so a crash while saving leaves a folder that is never resumed from."""
    save(folder, model, critic, value_head)
    torch.save({"optimizer": optimizer.state_dict(), **state}, Path(folder) / TRAINER_STATE_FILE)
    resuming.mark_complete(folder, state["iteration"])


def load_checkpoint(folder: str, model, critic, value_head, optimizer) -> dict:
    """Restore what save_checkpoint wrote; returns its state. Each iteration draws from its own seed, so the run goes
    on exactly as if it had not stopped."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = str(next(model.parameters()).device)
    set_peft_model_state_dict(model, load_file(Path(folder) / "adapter_model.safetensors", device=device))
    if critic is not None:
        set_peft_model_state_dict(critic, load_file(Path(folder) / CRITIC_DIR / "adapter_model.safetensors",
                                                    device=device))
    value_head.load_state_dict(load_file(Path(folder) / VALUE_HEAD_FILE, device=device))
    state = torch.load(Path(folder) / TRAINER_STATE_FILE, weights_only=True)
    optimizer.load_state_dict(state.pop("optimizer"))
    return state


def policy_with_value_head(params, base_dir, sft_dir, lora):
    """The SFT model with a new LoRA adapter (seeded), in eval mode, and a zero-initialized value head."""
    from peft import get_peft_model

    model = models.sft_merged(base_dir, sft_dir, params.model)
    torch.manual_seed(params.seed)  # the adapter's A matrices are drawn from it
    model = get_peft_model(model, train.lora_config(lora, "CAUSAL_LM"))
    model.eval()  # no dropout anywhere: it would make the ratio differ from 1 before any update
    value_head = torch.nn.Linear(model.config.hidden_size, 1).to(next(model.parameters()).device)
    for weight in value_head.parameters():  # V = 0, the normalized reward's mean: no noise in the first advantages
        torch.nn.init.zeros_(weight)
    return model, value_head


def critic_from_reward_model(params, scorer, lora, stats: dict):
    """A separate critic: the trained reward model's trunk (its adapter merged) with a new LoRA adapter, and its
    score head as value head, rescaled to the normalized reward, (score - mean) / std, so that its first values are
    the reward model's own estimate of what the answer will score. Returns (critic, value head, scorer).

    The critic is built on the reward model `scorer` itself, not on a second copy: its adapter is merged in place,
    and the returned scorer, which shares the critic's layers, must score with the critic's adapter disabled."""
    from peft import get_peft_model

    scorer = scorer.merge_and_unload()
    torch.manual_seed(params.seed + 1)  # its adapter's A matrices: not the policy's draw
    critic = get_peft_model(scorer.model, train.lora_config(dataclasses.replace(lora, modules_to_save=None), None))
    critic.eval()
    score = scorer.score.weight.detach().float()  # (1, hidden), no bias
    value_head = torch.nn.Linear(score.shape[1], 1).to(score.device)
    with torch.no_grad():
        value_head.weight.copy_(score / stats["score_std"])
        value_head.bias.fill_(-stats["score_mean"] / stats["score_std"])
    return critic, value_head, scorer


def sft_sample_stats(model, reward_fn, tokenizer, prompts, section, seed: int) -> dict:
    """Mean and std of the reward model's raw scores of SFT answers (the policy with its adapter disabled) to
    `prompts`: the distribution PPO's samples start from (Ziegler et al., 2019), not the dataset's answers."""
    with model.disable_adapter():
        answers = generation.generate(model, prompts, tokenizer, section.max_new_tokens, section.temperature,
                                      seed=seed)
    raw, _ = reward_fn(prompts, answers)
    return {"score_mean": raw.mean().item(), "score_std": raw.std().item()}


def log(live, metrics: dict) -> None:
    for name, value in metrics.items():
        live.log_metric(name, value)
    live.next_step()


# -- the loop -------------------------------------------------------------------------------------------------------

def run(params, tokenized, base_dir, sft_dir, reward_dir, reference_dir, out, checkpoints, live_dir):
    """Train; save the policy's LoRA adapter, the value head (and the separate critic's adapter) and the tokenizer
    into `out`; return (metrics of the last iteration plus `iterations` and `train_seconds`, the trained policy)."""
    from tqdm.auto import tqdm

    section = params.ppo
    _, lora, chosen = train.resolve(params, params.sft, train.accelerator_memory_gb())  # only the LoRA settings
    print(f"ppo: settings after compute.preset: lora r={lora.r}, lora_alpha={lora.lora_alpha} ({chosen['preset']})")
    tokenizer = models.tokenizer(base_dir)

    # -- data: the training prompts, shuffled once, then cycled (iteration i's prompts depend on i only)
    train_rows = tokenize.load_split(tokenized, "train", max_length=10**9)
    prompts = train_rows["prompt_ids"]
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(params.seed)).tolist()

    # -- models: reward model (and its normalization); policy = SFT + new adapter (reference: adapter disabled);
    # the critic: a value head on the policy, or a separate model from the reward model
    scorer, stats = models.reward_model(base_dir, sft_dir, reward_dir, params.model)
    model, value_head = policy_with_value_head(params, base_dir, sft_dir, lora)
    turn_end = base.end_of_turn(tokenizer)
    if section.reward_normalization == "sft_samples":
        first = [prompts[order[k % len(order)]] for k in range(NORMALIZATION_PROMPTS)]
        stats = sft_sample_stats(model, scoring.reward_function(scorer, stats, tokenizer, turn_end,
                                                               section.mini_batch_size),
                                 tokenizer, first, section, seed=params.seed)
        print(f"ppo: reward normalized with SFT samples' mean {stats['score_mean']:.4f}, std {stats['score_std']:.4f}")
    critic = None
    if section.critic == "separate":
        critic, value_head, scorer = critic_from_reward_model(params, scorer, lora, stats)
    score = scoring.reward_function(scorer, stats, tokenizer, turn_end, section.mini_batch_size)

    def reward_fn(prompts, answers):  # a separate critic's adapter sits in the reward model's layers: off to score
        with critic.disable_adapter() if critic is not None else contextlib.nullcontext():
            return score(prompts, answers)
    policy_params = [p for p in model.parameters() if p.requires_grad]
    critic_params = list(value_head.parameters())
    if critic is not None:
        critic_params += [p for p in critic.parameters() if p.requires_grad]
    groups = [policy_params + critic_params] if critic is None else [policy_params, critic_params]  # clipped apart
    optimizer = torch.optim.AdamW([{"params": g} for g in groups], lr=section.learning_rate, weight_decay=0.0)

    # -- resume from the last complete checkpoint of a run with the same params, inputs and code
    resume = resuming.resume_point(checkpoints, [tokenized, base_dir, sft_dir, reward_dir], prefix="iter-",
                                   **resuming.align_sections(params, "ppo"))
    state = {"iteration": 0, "kl_coef": section.kl_coef, "history": []}
    if resume:
        state = load_checkpoint(resume, model, critic, value_head, optimizer)
    history, kl_coef = state["history"], state["kl_coef"]
    live = train.open_live(live_dir)
    for entry in history if live is not None else []:  # the curves show the whole run
        log(live, entry)

    # -- train: sample, score, update, adapt the KL coefficient; log and checkpoint
    start = time.time()
    bar = tqdm(range(state["iteration"] + 1, section.num_iterations + 1), desc="ppo", initial=state["iteration"],
               total=section.num_iterations)
    for iteration in bar:
        first = (iteration - 1) * section.rollout_batch_size
        batch = [prompts[order[k % len(order)]] for k in range(first, first + section.rollout_batch_size)]
        experience, metrics = rollout(model, critic, value_head, reward_fn, tokenizer, batch, section, kl_coef,
                                      seed=params.seed + iteration)
        metrics.update(update(model, critic, value_head, optimizer, experience, section, seed=params.seed + iteration))
        if section.adap_kl_ctrl:
            kl_coef = adaptive_kl_coef(kl_coef, metrics["kl"], section.target, section.horizon, len(batch))
        metrics = {k: round(v, 6) for k, v in metrics.items()}
        bar.set_postfix(score=metrics["score"], kl=metrics["kl"])
        if iteration % section.logging_steps == 0 or iteration == section.num_iterations:
            history.append(metrics)
            if live is not None:
                log(live, metrics)
        if iteration % section.save_steps == 0:
            save_checkpoint(Path(checkpoints) / f"iter-{iteration}", model, critic, value_head, optimizer,
                            {"iteration": iteration, "kl_coef": kl_coef, "history": history})
            resuming.prune_checkpoints(checkpoints, "iter-")
    wall = time.time() - start
    if live is not None:
        live.end()

    save(Path(out), model, critic, value_head, tokenizer=tokenizer)
    return {**history[-1], "iterations": section.num_iterations, "train_seconds": round(wall, 2),
            "lora_r": lora.r, "lora_alpha": lora.lora_alpha}, model
