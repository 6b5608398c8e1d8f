"""What an RL method (GRPO, RLOO, PPO) is rewarded by: the trained reward model and reward functions, each with its
weight from `<method>.rewards` in params.yaml.

Every function keeps TRL's reward-function contract, `f(prompts, completions, completion_ids, prompt_ids, **kwargs)
-> list[float]`: prompt and answer texts, answer token ids (the stop token that ended an answer included, as TRL and
`generation.generate` keep it), and the tokenize stage's prompt ids. So one function serves GRPOTrainer and
RLOOTrainer (which log each one's reward apart, as `rewards/<name>/mean`) and our PPO loop (which adds them up).

The built-ins are `BUILTINS` below. A user's own function is named "rewards.<module>:<function>" and lives in the
project's rewards/ folder: the align stage declares that folder as a DVC dep, so editing a function reruns align,
and a checkpoint resumes only with the same code (rlhf/resuming.py). It is checked (import, signature) before any
training, and its every output (length, finite numbers) as it trains.
"""
import importlib
import inspect
import math
import re

import torch

from rlhf import base, generation, models, scoring, stats
from rlhf.config import REWARD_FUNCTIONS
from rlhf.io import UserError

USER_PACKAGE = "rewards"  # the project's folder of user reward functions, a dep of the align stage in dvc.yaml
RM_NAME = "rm_reward"  # the reward model's name in TRL's logs (rewards/rm_reward/mean), as before rewards existed


# -- the built-ins: each a factory that takes what the function needs and returns it -------------------------------

def oracle(task: str, tokenizer):
    """The built-in task's ground-truth oracle: the ceiling, what an exact, verifiable reward achieves."""
    def oracle(prompts, completions, completion_ids, prompt_ids, **kwargs):
        return generation.oracle_scores(task, prompt_ids, completion_ids, tokenizer)
    return oracle


def length_penalty(limit: int):
    """Minus the answer's length in tokens (its stop token included) as a fraction of the answer limit `limit`
    (max_completion_length, or PPO's max_new_tokens): 0 for an empty answer, -1 for one that used all the room.
    Weighted against the reward model, it prices each token; it counters the length bias of learned rewards."""
    def length_penalty(prompts, completions, completion_ids, prompt_ids, **kwargs):
        return [-len(ids) / limit for ids in completion_ids]
    return length_penalty


def ends_with_eot(tokenizer):
    """1.0 if the answer ended with the chat template's end-of-turn token (or EOS: `generation.stop_ids`), 0.0 if it
    was cut off at the answer limit: the reward model never saw an answer without its end."""
    stops = generation.stop_ids(tokenizer)

    def ends_with_eot(prompts, completions, completion_ids, prompt_ids, **kwargs):
        return [float(bool(ids) and ids[-1] in stops) for ids in completion_ids]
    return ends_with_eot


def repetition_penalty():
    """Minus the share of repeated 4-grams within the answer (`stats.repetition`, the evaluate stage's degeneration
    measure): 0 for an answer that repeats nothing, near -1 for a loop ("great great great ...")."""
    def repetition_penalty(prompts, completions, completion_ids, prompt_ids, **kwargs):
        return [-stats.repetition([ids]) for ids in completion_ids]
    return repetition_penalty


def builtin(name: str, section: str, tokenizer, source: str, limit: int):
    """The built-in function `name` set up for this run."""
    if name == "oracle":
        task = generation.builtin_task(source)
        if task is None:
            raise UserError(f"{section}.rewards.functions names oracle, which needs a built-in task (data.source: "
                            f"builtin:...): data.source = {source!r} has no oracle. Remove oracle from the functions "
                            "or write a verifiable reward of your own in rewards/.")
        return oracle(task, tokenizer)
    return {"length_penalty": lambda: length_penalty(limit), "ends_with_eot": lambda: ends_with_eot(tokenizer),
            "repetition_penalty": repetition_penalty}[name]()


BUILTINS = REWARD_FUNCTIONS  # the names config.py checks params.yaml against; `builtin` handles each (tested)


# -- user functions -------------------------------------------------------------------------------------------------

def load_user(name: str, section: str):
    """The callable "rewards.<module>:<function>" names, checked to take the contract's arguments."""
    where = f"{section}.rewards.functions: {name!r}"
    module_name, _, function = name.partition(":")
    if module_name != USER_PACKAGE and not module_name.startswith(USER_PACKAGE + "."):
        raise UserError(f"{where} lives outside the project's {USER_PACKAGE}/ folder. The align stage declares only "
                        f"that folder as a DVC dependency, so DVC would not rerun align when the function changes. "
                        f"Move it into {USER_PACKAGE}/ (e.g. {USER_PACKAGE}/mine.py) and name it "
                        f"\"{USER_PACKAGE}.mine:{function or 'function'}\".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"{where}: cannot import module {module_name!r} ({err}). Give the module's dotted path "
                        f"from the project folder, e.g. \"{USER_PACKAGE}.example:polite\" for "
                        f"{USER_PACKAGE}/example.py.") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise UserError(f"{where}: module {module_name} has no function {function!r}. Write it as "
                        f"\"<module>:<function>\" with a function defined in {module.__file__}.")
    try:
        inspect.signature(fn).bind(prompts=[], completions=[], completion_ids=[], prompt_ids=[])
    except TypeError as err:
        raise UserError(f"{where}: its signature {inspect.signature(fn)} cannot take the reward-function arguments "
                        f"({err}). Define it as `def {function}(prompts, completions, completion_ids, prompt_ids, "
                        "**kwargs)` (taking by name only the ones it uses, and **kwargs) and return one float per "
                        "completion.") from None
    return fn


def checked(name: str, section: str, fn):
    """`fn` called with the contract's arguments only (TRL passes more: trainer_state, log_metric ...), its output
    checked: one finite number per completion, or a UserError naming the function. Named for TRL's logs."""
    def reward(prompts, completions, completion_ids, prompt_ids, **kwargs):
        values = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, prompt_ids=prompt_ids)
        where = f"reward function {name!r} ({section}.rewards.functions)"
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError) as err:
            raise UserError(f"{where} returned {values!r:.200}, not a list of numbers ({err}); return one float per "
                            "completion.") from None
        if len(values) != len(completion_ids):
            raise UserError(f"{where} returned {len(values)} rewards for {len(completion_ids)} completions; return "
                            "exactly one float per completion, in their order.")
        bad = [n for n, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise UserError(f"{where} returned a non-finite reward ({values[bad[0]]}) for completion {bad[0]} "
                            f"({completions[bad[0]]!r:.200}); a NaN or infinite reward would corrupt the advantages. "
                            "Return a finite number for every completion.")
        return values
    reward.__name__ = re.sub(r"\W+", "_", name).strip("_")  # a metric name (no ':' or '.')
    return reward


def functions(rewards, section: str, tokenizer, source: str, limit: int) -> list[tuple[object, float]]:
    """(function, weight) for every function in `rewards.functions` with a non-zero weight, checked and set up."""
    out = []
    for name, weight in rewards.functions.items():
        if weight == 0:
            continue
        fn = builtin(name, section, tokenizer, source, limit) if name in BUILTINS else load_user(name, section)
        out.append((checked(name, section, fn), weight))
    return out


# -- the reward model as one reward function, and the weighted sum ---------------------------------------------------

def reward_model_function(score, rewards):
    """A reward function: the reward model's normalized score of prompt + completion, on token ids, combined over an
    ensemble by `rewards.aggregate` (`score` is rlhf.scoring.reward_function's scorer)."""
    def rm_reward(prompts, completions, completion_ids, prompt_ids, **kwargs):
        return scoring.aggregate(score(prompt_ids, completion_ids), rewards.aggregate,
                                 rewards.uncertainty_coef).tolist()
    rm_reward.__name__ = RM_NAME
    return rm_reward


def prompt_texts(prompt_ids: list[list[int]], tokenizer) -> list[str]:
    """The prompts as text that tokenizes back to the same ids (the tokenizer's own BOS left off: it adds it)."""
    added = tokenizer("")["input_ids"]  # what the tokenizer adds by itself (BOS for Llama 3, Mistral, Gemma)
    return [tokenizer.decode(ids[len(added):] if ids[:len(added)] == added else ids) for ids in prompt_ids]


def weighted_sum(funcs: list[tuple[object, float]], prompt_ids, completion_ids, tokenizer) -> torch.Tensor:
    """sum over `funcs` of weight * function(...), (B,) float32: the functions' part of PPO's score, called as TRL's
    trainers call them (texts decoded as they decode them)."""
    total = torch.zeros(len(completion_ids))
    prompts = prompt_texts(prompt_ids, tokenizer)
    completions = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    for fn, weight in funcs:
        total += weight * torch.tensor(fn(prompts, completions, completion_ids, prompt_ids), dtype=torch.float32)
    return total


def total_score(score, rewards, funcs: list[tuple[object, float]], tokenizer):
    """PPO's scorer: `f(prompt_ids, answer_ids) -> (raw, total)`, each (B,): the reward model's raw score (logged)
    and the score PPO optimizes, reward_model * aggregate(reward model's scores) + sum of weight * function. With
    only the reward model at weight 1, exactly its normalized score, as before functions existed."""
    def total(prompt_ids, answer_ids):
        scores = score(prompt_ids, answer_ids)
        value = rewards.reward_model * scoring.aggregate(scores, rewards.aggregate, rewards.uncertainty_coef)
        if funcs:
            value = value + weighted_sum(funcs, prompt_ids, answer_ids, tokenizer).to(value.dtype)
        return scores.raw, value
    return total


# -- what GRPO and RLOO share: their prompts, and their reward functions with TRL's weights --------------------------

def prompt_dataset(prompt_ids: list[list[int]], tokenizer, method: str):
    """TRL's online trainers generate from text prompts; give them the tokenize stage's prompts as text that
    tokenizes back to exactly the same ids (checked), plus the ids themselves for the reward functions."""
    from datasets import Dataset

    texts = prompt_texts(prompt_ids, tokenizer)
    for number, (text, ids) in enumerate(zip(texts, prompt_ids), 1):
        if tokenizer(text)["input_ids"] != ids:
            raise UserError(f"{method}: training prompt {number} does not tokenize back to the tokenize stage's ids, "
                            f"so {method} would generate from a different prompt. This tokenizer does not round-trip "
                            "its decoded text; use another method for this model.")
    return Dataset.from_dict({"prompt": texts, "prompt_ids": prompt_ids})


def trl_reward_funcs(params, paths, section, tokenizer) -> tuple[list, list[float]]:
    """(reward_funcs, reward_weights) for GRPOTrainer / RLOOTrainer from `section.rewards`: the reward model (loaded
    only if its weight is not 0) and the functions."""
    rewards, funcs = section.rewards, []
    if rewards.reward_model:
        scorer, rm_stats = models.reward_model(paths.base, paths.sft, paths.reward, params.model)
        score = scoring.reward_function(scorer, rm_stats, tokenizer, base.end_of_turn(tokenizer),
                                        section.per_device_train_batch_size)
        funcs.append((reward_model_function(score, rewards), rewards.reward_model))
    funcs += functions(rewards, params.method, tokenizer, params.data.source, section.max_completion_length)
    return [fn for fn, _ in funcs], [weight for _, weight in funcs]
