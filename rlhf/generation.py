"""Sampling from a causal LM on tokenized prompts, and scoring samples with the built-in task's oracle.

Used by the align stage's own check, by PPO's rollouts, and by the evaluate stage."""
import contextlib

import torch

from rlhf import base, synthetic


def sampling_config(tokenizer, max_new_tokens: int, temperature: float, top_p: float, stops: list[int]):
    """A GenerationConfig with our sampling params, the tokens that end an answer (`stop_ids`), the pad token, and
    nothing else."""
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                            max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)


@contextlib.contextmanager
def only_our_sampling(model, config):
    """`generate` fills every field its config leaves unset from the model's own generation config (a checkpoint's
    repetition penalty, say), so the answers would come from another distribution than the one PPO and the KL
    estimate score. Swap that config for ours while sampling."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved, inner.generation_config = inner.generation_config, config
    try:
        yield config
    finally:
        inner.generation_config = saved


@torch.no_grad()
def generate(model, prompts: list[list[int]], tokenizer, max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, batch_size: int = 64, seed: int = 0) -> list[list[int]]:
    """Sampled completion ids per prompt, cut after the first stop token (kept: see `stop_ids`) and without padding.

    Prompts are left-padded in batches; sampling is seeded so that the same model, prompts and seed give the same
    completions on CPU.
    """
    device = next(model.parameters()).device
    stops = stop_ids(tokenizer)
    config = sampling_config(tokenizer, max_new_tokens, temperature, top_p, stops)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    completions = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        longest = max(len(p) for p in batch)
        ids = torch.full((len(batch), longest), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(batch):
            ids[i, longest - len(p):] = torch.tensor(p)
            mask[i, longest - len(p):] = 1
        with only_our_sampling(model, config):
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for row in out[:, longest:].tolist():
            ends = [n for n, token in enumerate(row) if token in stops]
            completions.append(row[: ends[0] + 1] if ends else row)
    torch.random.set_rng_state(generator_state)
    return completions


def stop_ids(tokenizer) -> list[int]:
    """The tokens that end an answer: the chat template's end of turn (<|eot_id|> for Llama 3, <end_of_turn> for
    Gemma), and EOS, where they differ."""
    end, _ = base.end_of_turn(tokenizer)
    return [end] if tokenizer.eos_token_id in (None, end) else [end, tokenizer.eos_token_id]


def prompt_text(prompt_ids: list[int], tokenizer) -> str:
    """The user's words in a templated prompt (special tokens and role names dropped), for the oracle."""
    return tokenizer.decode(prompt_ids, skip_special_tokens=True)


def oracle_scores(task: str, prompts: list[list[int]], completions: list[list[int]], tokenizer) -> list[float]:
    """Ground-truth rewards of `completions` under the built-in task's oracle."""
    _, oracle = synthetic.TASKS[task]
    return [oracle(prompt_text(p, tokenizer), tokenizer.decode(c, skip_special_tokens=True))
            for p, c in zip(prompts, completions)]


def builtin_task(source: str) -> str | None:
    """The built-in task name of a data.source, or None for real data (no oracle)."""
    return source.removeprefix("builtin:") if source.startswith("builtin:") else None
