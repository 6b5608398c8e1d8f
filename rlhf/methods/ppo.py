"""PPO (Schulman et al., 2017) for language models, as in Ouyang et al. (2022): sample answers, score them with the
trained reward model, penalize each token's KL to the SFT reference, estimate advantages with GAE (Schulman et al.,
2016) from a value head, and take a few clipped-surrogate epochs over the rollouts. TRL 1.x has no PPOTrainer, so this
is plain PyTorch + PEFT, one loop in `run`.

This module is the recipe: it orchestrates and owns the checkpoint format. The parts are in rlhf/ppo/:
`functional` (the math, pure functions on tensors), `rollouts` (the typed records, sampling and the per-token forward
passes) and `critic` (the policy with its value head, or a separate critic from the reward model; `ppo.critic`). The
reward model scores prompt + answer + the chat template's turn end (see `rlhf.scoring.reward_function`), as it saw
answers in training; `ppo.rewards` weighs it and adds reward functions (rlhf/rewards.py, `total_score`).
"""
import contextlib
import time
from pathlib import Path

import torch

from rlhf import base, generation, models, resuming, rewards, scoring, tokenize, train
from rlhf.ppo import functional, rollouts
from rlhf.ppo.critic import critic_from_reward_model, policy_with_value_head

VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_DIR = "critic"  # the separate critic's LoRA adapter, next to the value head
NORMALIZATION_PROMPTS = 256  # training prompts answered by SFT for reward_normalization: sft_samples (std within ~5%)
TRAINER_STATE_FILE = "trainer_state.pt"  # optimizer state and iteration number, in checkpoints only


# -- one update, and the checkpoint format --------------------------------------------------------------------------

def update(model, critic, value_head, optimizer, experience: rollouts.Experience, section,
           seed: int) -> rollouts.UpdateStats:
    """`ppo_epochs` passes over the rollouts in shuffled minibatches, each optimizer parameter group's gradient
    clipped on its own; returns the mean losses and diagnostics."""
    order = torch.Generator().manual_seed(seed)  # per-iteration seed: a resumed run shuffles the same way
    width = experience.mask.shape[1]
    logged = {}
    for _ in range(section.ppo_epochs):
        for index in torch.randperm(len(experience.ids), generator=order).split(section.mini_batch_size):
            mb = experience.select(index)
            logp, values, _ = rollouts.forward(model, critic, value_head, mb.ids, mb.attention_mask, mb.starts, width,
                                               section.temperature)
            p_loss, stats = functional.policy_loss(logp, mb.logp, mb.advantages, mb.mask, section.clip_range)
            v_loss, value_clip = functional.value_loss(values, mb.values, mb.returns, mb.mask,
                                                       section.clip_range_value)
            optimizer.zero_grad()
            (p_loss + section.vf_coef * v_loss).backward()
            for group in optimizer.param_groups:
                torch.nn.utils.clip_grad_norm_(group["params"], section.max_grad_norm)
            optimizer.step()
            stats |= {"policy_loss": p_loss, "value_loss": v_loss, "value_clip_fraction": value_clip}
            for name, value in stats.items():
                logged.setdefault(name, []).append(value.item())
    return rollouts.UpdateStats(**{name: max(v) if name == "ratio_max" else sum(v) / len(v)
                                   for name, v in logged.items()})


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
    train.sort_target_modules(folder)


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


def sft_sample_stats(model, scorer, stats: list[dict], tokenizer, turn_end, prompts, section, seed: int) -> list[dict]:
    """Each reward-model member's stats with the mean and std of its raw scores of SFT answers (the policy with its
    adapter disabled) to `prompts`: the distribution PPO's samples start from (Ziegler et al., 2019), not the
    dataset's answers."""
    with model.disable_adapter():
        answers = generation.generate(model, prompts, tokenizer, section.max_new_tokens, section.temperature,
                                      seed=seed)
    unit = [{**s, "score_mean": 0.0, "score_std": 1.0} for s in stats]  # members' "normalized" scores: their raw ones
    raw = scoring.reward_function(scorer, unit, tokenizer, turn_end, section.mini_batch_size)(prompts, answers).members
    return [{**s, "score_mean": raw[:, j].mean().item(), "score_std": raw[:, j].std().item()}
            for j, s in enumerate(stats)]


def log(live, entry: dict) -> None:
    """One point of every curve, at the entry's `step`: the optimizer steps taken so far, the x axis of the
    Trainer-based methods' curves too (rlhf.train.step_callback), so that methods compare on one axis."""
    live.step = entry["step"]
    for name, value in entry.items():
        if name != "step":
            live.log_metric(name, value)
    live.next_step()


# -- the loop -------------------------------------------------------------------------------------------------------

def run(params, paths, out):
    """Train; save the policy's LoRA adapter, the value head (and the separate critic's adapter) and the tokenizer
    into `out`; return (metrics of the last iteration plus `iterations` and `train_seconds`, the trained policy)."""
    from tqdm.auto import tqdm

    section = params.ppo
    _, lora, chosen = train.resolve(params, params.sft, train.accelerator_memory_gb())  # only the LoRA settings
    print(f"ppo: settings after compute.preset: lora r={lora.r}, lora_alpha={lora.lora_alpha} ({chosen['preset']})")
    tokenizer = models.tokenizer(paths.base)

    # -- data: the training prompts, shuffled once, then cycled (iteration i's prompts depend on i only)
    train_rows = tokenize.load_split(paths.tokenized, "train", max_length=10**9)
    prompts = train_rows["prompt_ids"]
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(params.seed)).tolist()

    # -- models: reward model (and its normalization); policy = SFT + new adapter (reference: adapter disabled);
    # the critic: a value head on the policy, or a separate model from the reward model
    scorer, stats = models.reward_model(paths.base, paths.sft, paths.reward, params.model)
    model, value_head = policy_with_value_head(params, paths.base, paths.sft, lora)
    turn_end = base.end_of_turn(tokenizer)
    if section.reward_normalization == "sft_samples":
        first = [prompts[order[k % len(order)]] for k in range(NORMALIZATION_PROMPTS)]
        stats = sft_sample_stats(model, scorer, stats, tokenizer, turn_end, first, section, seed=params.seed)
        print("ppo: reward normalized with SFT samples' mean, std: "
              + ", ".join(f"{s['score_mean']:.4f}, {s['score_std']:.4f}" for s in stats))
    critic = None
    if section.critic == "separate":
        critic, value_head, scorer, stats = critic_from_reward_model(params, scorer, lora, stats)
    score = rewards.total_score(scoring.reward_function(scorer, stats, tokenizer, turn_end, section.mini_batch_size),
                                section.rewards, rewards.functions(section.rewards, "ppo", tokenizer,
                                                                   params.data.source, section.max_new_tokens),
                                tokenizer)

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
    checkpoints = paths.align_checkpoints
    resume = resuming.resume_point(checkpoints, train.align_inputs(paths), prefix="iter-",
                                   **resuming.align_sections(params, "ppo"))
    state = {"iteration": 0, "kl_coef": section.kl_coef, "history": []}
    if resume:
        state = load_checkpoint(resume, model, critic, value_head, optimizer)
    history, kl_coef = state["history"], state["kl_coef"]
    live = train.open_live(paths.align_live)
    for entry in history if live is not None else []:  # the curves show the whole run
        log(live, entry)

    # -- train: sample, score, update, adapt the KL coefficient; log and checkpoint
    updates_per_iteration = section.ppo_epochs * -(-section.rollout_batch_size // section.mini_batch_size)
    start = time.time()
    bar = tqdm(range(state["iteration"] + 1, section.num_iterations + 1), desc="ppo", initial=state["iteration"],
               total=section.num_iterations)
    for iteration in bar:
        first = (iteration - 1) * section.rollout_batch_size
        batch = [prompts[order[k % len(order)]] for k in range(first, first + section.rollout_batch_size)]
        experience, sampled = rollouts.rollout(model, critic, value_head, reward_fn, tokenizer, batch, section,
                                               kl_coef, seed=params.seed + iteration)
        updated = update(model, critic, value_head, optimizer, experience, section, seed=params.seed + iteration)
        if section.adap_kl_ctrl:
            kl_coef = functional.adaptive_kl_coef(kl_coef, sampled.kl, section.target, section.horizon, len(batch))
        metrics = {k: round(v, 6) for k, v in (sampled._asdict() | updated._asdict()).items()}
        bar.set_postfix(score=metrics["score"], kl=metrics["kl"])
        if iteration % section.logging_steps == 0 or iteration == section.num_iterations:
            history.append({**metrics, "step": iteration * updates_per_iteration})
            if live is not None:
                log(live, history[-1])
        if iteration % section.save_steps == 0:
            save_checkpoint(Path(checkpoints) / f"iter-{iteration}", model, critic, value_head, optimizer,
                            {"iteration": iteration, "kl_coef": kl_coef, "history": history})
            resuming.prune_checkpoints(checkpoints, "iter-")
    wall = time.time() - start
    if live is not None:
        live.end()

    save(Path(out), model, critic, value_head, tokenizer=tokenizer)
    last = {k: v for k, v in history[-1].items() if k != "step"}
    return {**last, "iterations": section.num_iterations, "train_seconds": round(wall, 2),
            "lora_r": lora.r, "lora_alpha": lora.lora_alpha}, model
