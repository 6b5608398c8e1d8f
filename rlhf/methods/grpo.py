"""GRPO (Shao et al., 2024) with TRL's GRPOTrainer: groups of `grpo.num_generations` sampled answers per prompt,
advantages relative to the group, rewarded by `grpo.rewards`: the trained reward model (normalized with its validation
stats) and reward functions (rlhf/rewards.py: the built-in task's oracle as a verifiable reward, length, end-of-turn
and repetition penalties, or your own), weighted, as TRL's reward_funcs and reward_weights. Starts from the SFT model
with a new LoRA adapter; the KL reference (`grpo.beta`) is the same weights with the adapter disabled."""
from trl import GRPOConfig, GRPOTrainer

from rlhf import generation, models, rewards, tokenize, train


def run(params, paths, out):
    section = train.start_method(params)
    tokenizer = models.tokenizer(paths.base)

    # -- data: prompts only; the answers are sampled during training
    train_rows = tokenize.load_split(paths.tokenized, "train", max_length=10**9)
    prompts = rewards.prompt_dataset(train_rows["prompt_ids"], tokenizer, "grpo")

    # -- rewards: the trained reward model and the functions, each with its weight
    funcs, weights = rewards.trl_reward_funcs(params, paths, section, tokenizer)

    # -- model: SFT weights + new adapter, sampling until the template's end of turn
    model = models.sft_merged(paths.base, paths.sft, params.model)
    model.generation_config.eos_token_id = generation.stop_ids(tokenizer)  # TRL stops at these and EOS
    return train.fit_method(params, paths, out, GRPOTrainer, GRPOConfig, prompts, None, model,
                            config={"eval_strategy": "no", "top_k": 0, "reward_weights": weights}, drop=("rewards",),
                            reward_funcs=funcs)
