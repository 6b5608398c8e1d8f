"""GRPO (Shao et al., 2024) with TRL's GRPOTrainer: groups of `grpo.num_generations` sampled answers per prompt,
advantages relative to the group, rewarded by the trained reward model (normalized with its validation stats) and,
with `grpo.oracle_reward: true` on a built-in task, also by the task's oracle as a verifiable reward. Starts from the
SFT model with a new LoRA adapter; the KL reference (`grpo.beta`) is the same weights with the adapter disabled."""
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from rlhf import base, generation, models, scoring, tokenize, train
from rlhf.io import UserError


def prompt_dataset(prompt_ids: list[list[int]], tokenizer) -> Dataset:
    """GRPOTrainer generates from text prompts; give it the tokenize stage's prompts as text that tokenizes back to
    exactly the same ids (checked), plus the ids themselves for the reward functions."""
    added = tokenizer("")["input_ids"]  # what the tokenizer adds by itself (BOS for Llama 3, Mistral, Gemma)
    texts = [tokenizer.decode(ids[len(added):] if ids[:len(added)] == added else ids) for ids in prompt_ids]
    for number, (text, ids) in enumerate(zip(texts, prompt_ids), 1):
        if tokenizer(text)["input_ids"] != ids:
            raise UserError(f"grpo: training prompt {number} does not tokenize back to the tokenize stage's ids, so "
                            "GRPO would generate from a different prompt. This tokenizer does not round-trip its "
                            "decoded text; use another method for this model.")
    return Dataset.from_dict({"prompt": texts, "prompt_ids": prompt_ids})


def reward_model_reward(score):
    """A GRPO reward function: the reward model's normalized score of prompt + completion, on token ids
    (`score` is rlhf.scoring.reward_function's scorer)."""
    def rm_reward(prompts, completions, completion_ids, prompt_ids, **kwargs):
        return score(prompt_ids, completion_ids)[1].tolist()
    return rm_reward


def oracle_reward(task: str, tokenizer):
    """A GRPO reward function: the built-in task's ground-truth oracle."""
    def oracle(prompts, completions, completion_ids, prompt_ids, **kwargs):
        return generation.oracle_scores(task, prompt_ids, completion_ids, tokenizer)
    return oracle


def run(params, paths, out):
    section = train.start_method(params)
    tokenizer = models.tokenizer(paths.base)

    # -- data: prompts only; the answers are sampled during training
    train_rows = tokenize.load_split(paths.tokenized, "train", max_length=10**9)
    prompts = prompt_dataset(train_rows["prompt_ids"], tokenizer)

    # -- rewards: the trained reward model, plus the oracle where asked for
    scorer, stats = models.reward_model(paths.base, paths.sft, paths.reward, params.model)
    funcs = [reward_model_reward(scoring.reward_function(scorer, stats, tokenizer, base.end_of_turn(tokenizer),
                                                        section.per_device_train_batch_size))]
    task = generation.builtin_task(params.data.source)
    if section.oracle_reward:
        if task is None:
            raise UserError("grpo.oracle_reward: true needs a built-in task (data.source: builtin:...), which has an "
                            "oracle; set it to false for real data.")
        funcs.append(oracle_reward(task, tokenizer))

    # -- model: SFT weights + new adapter, sampling until the template's end of turn
    model = models.sft_merged(paths.base, paths.sft, params.model)
    model.generation_config.eos_token_id = generation.stop_ids(tokenizer)  # TRL stops at these and EOS
    return train.fit_method(params, paths, out, GRPOTrainer, GRPOConfig, prompts, None, model,
                            config={"eval_strategy": "no", "top_k": 0}, drop=("oracle_reward",), reward_funcs=funcs)
