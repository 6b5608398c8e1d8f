"""PPO's critic, built one of two ways (`ppo.critic`):

- `shared`: a linear value head on the policy's last hidden states, trained jointly (its gradient reaches the
  policy's adapter too). `policy_with_value_head` builds the policy and this head.
- `separate`: a model initialised from the reward model, with its own LoRA adapter, its score head as value head,
  and its own gradient clipping (as in Ziegler et al., 2019 and Huang et al., 2024, "The N+ implementation details
  of RLHF with PPO"). `critic_from_reward_model` builds it.

The policy is the SFT model plus a new LoRA adapter; with the adapter disabled the same weights are the reference, so
no second copy is loaded.
"""
import dataclasses

import torch

from rlhf import models, train


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


def critic_from_reward_model(params, scorer, lora, stats: list[dict]):
    """A separate critic: the trained reward model's trunk (its adapter merged) with a new LoRA adapter, and its
    score head as value head, rescaled to the normalized reward, (score - mean) / std, so that its first values are
    the reward model's own estimate of what the answer will score. Returns (critic, value head, scorer, the scorer's
    member stats).

    One reward model: the critic is built on the reward model `scorer` itself, not on a second copy: its adapter is
    merged in place, and the returned scorer, which shares the critic's layers and has no adapter left to switch to,
    must score with the critic's adapter disabled. An ensemble: the critic starts from member 0 (the first adapter),
    merged into a copy of the scorer, since the other members still need the unmerged trunk; that copy costs one
    more model's memory, not another load of the base weights."""
    import copy

    from peft import get_peft_model

    first = stats[0]
    if len(stats) == 1:
        scorer = scorer.merge_and_unload()
        trunk, stats = scorer, [{k: v for k, v in first.items() if k != "adapter"}]
    else:
        trunk = copy.deepcopy(scorer)
        trunk.set_adapter(first["adapter"])
        trunk = trunk.merge_and_unload()
    torch.manual_seed(params.seed + 1)  # its adapter's A matrices: not the policy's draw
    critic = get_peft_model(trunk.model, train.lora_config(dataclasses.replace(lora, modules_to_save=None), None))
    critic.eval()
    score = trunk.score.weight.detach().float()  # (1, hidden), no bias
    value_head = torch.nn.Linear(score.shape[1], 1).to(score.device)
    with torch.no_grad():
        value_head.weight.copy_(score / first["score_std"])
        value_head.bias.fill_(-first["score_mean"] / first["score_std"])
    return critic, value_head, scorer, stats
