"""PPO (Schulman et al., 2017) for language models, as in Ouyang et al. (2022): sample answers, score them with the
trained reward model, penalize each token's KL to the SFT reference, estimate advantages with GAE (Schulman et al.,
2016) from a value head, and take a few clipped-surrogate epochs over the rollouts. TRL 1.x has no PPOTrainer, so this
is plain PyTorch + PEFT, one loop in `run`.

The policy is the SFT model plus a new LoRA adapter; with the adapter disabled the same weights are the reference, so
no second copy is loaded. The value head is one linear layer on the policy's last hidden states, trained jointly (its
gradient reaches the adapter too). Tensors of one rollout are (B, T): B answers, T = the longest answer's tokens,
right-padded; `mask` is 1 on answer tokens (the EOS included) and 0 on padding. The reward model scores prompt +
answer + the chat template's turn end (see `rlhf.reward.reward_function`), as it saw answers in training.
"""
import time
from pathlib import Path

import torch

from rlhf import base, generation, policy, resuming, reward, scoring, train

VALUE_HEAD_FILE = "value_head.safetensors"
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
                clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The negated clipped surrogate objective (Schulman et al., 2017, eq. 7), averaged over answer tokens:

        L = -E_t[ min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) ],   rho_t = exp(logp_t - old_logp_t),

    and the clip fraction: the share of tokens where the clipped term is the smaller one (their gradient is zero).

    Shapes: logp, old_logp, advantages, mask (B, T) -> (loss, clip_fraction), scalars.
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float) -> torch.Tensor:
    """Clipped value loss (as in OpenAI baselines' PPO2 and Ziegler et al., 2019):

        L_V = 1/2 E_t[ max((V_t - R_t)^2, (old_V_t + clip(V_t - old_V_t, -eps_v, eps_v) - R_t)^2) ].

    Shapes: values, old_values, returns, mask (B, T) -> scalar.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


# -- the models: rollouts as tensors and per-token forward passes ---------------------------------------------------

def rollout_tensors(prompts: list[list[int]], answers: list[list[int]], pad_id: int) -> dict:
    """prompt + answer ids right-padded (B, L), their attention mask (B, L), the position in the shifted logits that
    predicts each answer's first token (B,), and the answer-token mask (B, T)."""
    ids, attention_mask = scoring.pad_right([p + a for p, a in zip(prompts, answers)], pad_id)
    lengths = torch.tensor([len(a) for a in answers])
    mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).float()
    starts = torch.tensor([len(p) - 1 for p in prompts])  # logits at position t predict token t + 1
    return {"ids": ids, "attention_mask": attention_mask, "starts": starts, "mask": mask}


def token_stats(model, value_head, ids, attention_mask, starts, width: int, temperature: float):
    """Per answer token: log-prob of the sampled token, the value of the state before it (None without a value
    head) and the entropy of the next-token distribution, each (B, width). Logits are divided by the sampling
    temperature, so the ratios and the KL are those of the distribution the answers were sampled from."""
    out = model(input_ids=ids, attention_mask=attention_mask, output_hidden_states=value_head is not None)
    index = (starts[:, None] + torch.arange(width, device=ids.device)).clamp(max=ids.shape[1] - 2)
    logits = out.logits[:, :-1].float().gather(1, index[..., None].expand(-1, -1, out.logits.shape[-1]))
    logits = logits / temperature
    targets = ids[:, 1:].gather(1, index)
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, :-1].float()
        values = value_head(hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))).squeeze(-1)
    return logp, values, entropy_from_logits(logits.detach())


@torch.no_grad()
def rollout(model, value_head, reward_fn, tokenizer, prompts: list[list[int]], section, seed: int):
    """Sample answers, score them, and compute everything the update needs: (experience dict of tensors, metrics)."""
    device = next(model.parameters()).device
    answers = generation.generate(model, prompts, tokenizer, section.max_new_tokens, section.temperature, seed=seed)
    score, normalized = reward_fn(prompts, answers)
    normalized = normalized.to(device)
    pad = tokenizer.pad_token_id
    batch = {k: v.to(device) for k, v in rollout_tensors(prompts, answers, pad).items()}
    width = batch["mask"].shape[1]

    parts = []  # forward passes in chunks of mini_batch_size, to bound memory as the update does
    for chunk in torch.arange(len(prompts), device=device).split(section.mini_batch_size):
        args = (batch["ids"][chunk], batch["attention_mask"][chunk], batch["starts"][chunk], width,
                section.temperature)
        logp, values, entropy = token_stats(model, value_head, *args)
        with model.disable_adapter():
            ref_logp, _, _ = token_stats(model, None, *args)
        parts.append((logp, values, entropy, ref_logp))
    logp, values, entropy, ref_logp = (torch.cat(p) for p in zip(*parts))

    mask = batch["mask"]
    rewards = kl_penalty_rewards(normalized, logp, ref_logp, mask, section.kl_coef)
    advantages, returns = gae(rewards, values, mask, section.gamma, section.lam)
    if section.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    experience = {**batch, "logp": logp, "values": values, "advantages": advantages, "returns": returns}
    metrics = {
        "score": score.mean().item(),
        "score_normalized": normalized.mean().item(),
        "kl": ((logp - ref_logp) * mask).sum(1).mean().item(),  # per answer, summed over its tokens
        "entropy": masked_mean(entropy, mask).item(),
        "explained_variance": explained_variance(values, returns, mask).item(),
        "response_length": mask.sum(1).mean().item(),
    }
    return experience, metrics


def update(model, value_head, optimizer, experience: dict, section, seed: int) -> dict:
    """`ppo_epochs` passes over the rollouts in shuffled minibatches; returns the mean losses and clip fraction."""
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    order = torch.Generator().manual_seed(seed)  # per-iteration seed: a resumed run shuffles the same way
    width = experience["mask"].shape[1]
    logged = {"policy_loss": [], "value_loss": [], "clip_fraction": []}
    for _ in range(section.ppo_epochs):
        for index in torch.randperm(len(experience["ids"]), generator=order).split(section.mini_batch_size):
            mb = {k: v[index.to(v.device)] for k, v in experience.items()}
            logp, values, _ = token_stats(model, value_head, mb["ids"], mb["attention_mask"], mb["starts"], width,
                                          section.temperature)
            p_loss, clip_fraction = policy_loss(logp, mb["logp"], mb["advantages"], mb["mask"], section.clip_range)
            v_loss = value_loss(values, mb["values"], mb["returns"], mb["mask"], section.clip_range_value)
            optimizer.zero_grad()
            (p_loss + section.vf_coef * v_loss).backward()
            torch.nn.utils.clip_grad_norm_(trainable, section.max_grad_norm)
            optimizer.step()
            for name, value in (("policy_loss", p_loss), ("value_loss", v_loss), ("clip_fraction", clip_fraction)):
                logged[name].append(value.item())
    return {name: sum(v) / len(v) for name, v in logged.items()}


def save(folder: Path, model, value_head, tokenizer=None) -> None:
    """The adapter, the value head and (for the final output) the tokenizer."""
    from safetensors.torch import save_file

    model.save_pretrained(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()},
              Path(folder) / VALUE_HEAD_FILE)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def save_checkpoint(folder: Path, model, value_head, optimizer, iteration: int, history: list[dict]) -> None:
    """Everything a resumed run needs: weights, optimizer state, iteration and logged metrics; marked complete
    last, so a crash while saving leaves a folder that is never resumed from."""
    save(folder, model, value_head)
    torch.save({"optimizer": optimizer.state_dict(), "iteration": iteration, "history": history},
               Path(folder) / TRAINER_STATE_FILE)
    resuming.mark_complete(folder, iteration)


def load_checkpoint(folder: str, model, value_head, optimizer) -> tuple[int, list[dict]]:
    """Restore what save_checkpoint wrote; returns (iteration, history). Each iteration draws from its own seed, so
    the run goes on exactly as if it had not stopped."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    set_peft_model_state_dict(model, load_file(Path(folder) / "adapter_model.safetensors", device=str(device)))
    value_head.load_state_dict(load_file(Path(folder) / VALUE_HEAD_FILE, device=str(device)))
    state = torch.load(Path(folder) / TRAINER_STATE_FILE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return state["iteration"], state["history"]


def to_accelerator(model, cfg):
    """`model` on the GPU if there is one (k-bit weights are put there when loaded)."""
    return model.to("cuda") if torch.cuda.is_available() and cfg.quantization == "none" else model


def policy_with_value_head(params, base_dir, sft_dir, lora):
    """The SFT model with a new LoRA adapter (seeded), in eval mode, and a zero-initialized value head."""
    from peft import get_peft_model

    model = to_accelerator(policy.load_sft_merged(base_dir, sft_dir, params.model), params.model)
    torch.manual_seed(params.seed)  # the adapter's A matrices are drawn from it
    model = get_peft_model(model, train.lora_config(lora, "CAUSAL_LM"))
    model.eval()  # no dropout anywhere: it would make the ratio differ from 1 before any update
    value_head = torch.nn.Linear(model.config.hidden_size, 1).to(next(model.parameters()).device)
    for weight in value_head.parameters():  # V = 0, the normalized reward's mean: no noise in the first advantages
        torch.nn.init.zeros_(weight)
    return model, value_head


def log(live, metrics: dict) -> None:
    for name, value in metrics.items():
        live.log_metric(name, value)
    live.next_step()


# -- the loop -------------------------------------------------------------------------------------------------------

def run(params, tokenized, base_dir, sft_dir, reward_dir, out, checkpoints, live_dir):
    """Train; save the policy's LoRA adapter, the value head and the tokenizer into `out`; return (metrics of the
    last iteration plus `iterations` and `train_seconds`, the trained policy)."""
    from tqdm.auto import tqdm

    section = params.ppo
    _, lora, chosen = train.resolve(params, params.sft, train.accelerator_memory_gb())  # only the LoRA settings
    print(f"ppo: settings after compute.preset: lora r={lora.r}, lora_alpha={lora.lora_alpha} ({chosen['preset']})")
    tokenizer = base.load_tokenizer(base_dir)

    # -- data: the training prompts, shuffled once, then cycled (iteration i's prompts depend on i only)
    train_rows = train.load_split(tokenized, "train", max_length=10**9)
    prompts = train_rows["prompt_ids"]
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(params.seed)).tolist()

    # -- models: reward model; policy = SFT + new adapter (reference: adapter disabled) with a value head
    scorer, stats = reward.load_reward_model(base_dir, sft_dir, reward_dir, params.model)
    scorer = to_accelerator(scorer, params.model)
    model, value_head = policy_with_value_head(params, base_dir, sft_dir, lora)
    reward_fn = reward.reward_function(scorer, stats, tokenizer, base.end_of_turn(tokenizer),
                                       section.mini_batch_size)
    trainable = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=section.learning_rate, weight_decay=0.0)

    # -- resume from the last complete checkpoint of a run with the same params, inputs and code
    resume = resuming.resume_point(checkpoints, [tokenized, base_dir, sft_dir, reward_dir], prefix="iter-",
                                   **resuming.align_sections(params, "ppo"))
    done, history = load_checkpoint(resume, model, value_head, optimizer) if resume else (0, [])
    live = train.open_live(live_dir)
    for entry in history if live is not None else []:  # the curves show the whole run
        log(live, entry)

    # -- train: sample, score, update; log and checkpoint
    start = time.time()
    bar = tqdm(range(done + 1, section.num_iterations + 1), desc="ppo", initial=done, total=section.num_iterations)
    for iteration in bar:
        first = (iteration - 1) * section.rollout_batch_size
        batch = [prompts[order[k % len(order)]] for k in range(first, first + section.rollout_batch_size)]
        experience, metrics = rollout(model, value_head, reward_fn, tokenizer, batch, section,
                                      seed=params.seed + iteration)
        metrics.update(update(model, value_head, optimizer, experience, section, seed=params.seed + iteration))
        metrics = {k: round(v, 6) for k, v in metrics.items()}
        bar.set_postfix(score=metrics["score"], kl=metrics["kl"])
        if iteration % section.logging_steps == 0 or iteration == section.num_iterations:
            history.append(metrics)
            if live is not None:
                log(live, metrics)
        if iteration % section.save_steps == 0:
            save_checkpoint(Path(checkpoints) / f"iter-{iteration}", model, value_head, optimizer, iteration, history)
            resuming.prune_checkpoints(checkpoints, "iter-")
    wall = time.time() - start
    if live is not None:
        live.end()

    save(Path(out), model, value_head, tokenizer=tokenizer)
    return {**history[-1], "iterations": section.num_iterations, "train_seconds": round(wall, 2),
            "lora_r": lora.r, "lora_alpha": lora.lora_alpha}, model
