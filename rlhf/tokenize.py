"""tokenize: chat template + tokenizer, once, into the columns the TRL trainers consume.

Output columns per row: `id`, `prompt_ids`, `chosen_ids`, `rejected_ids` (DPO's pre-tokenized format: the completion
ids exclude the prompt). The other trainers' columns are concatenations of these (see `sft_columns` and
`reward_columns`), so no training stage tokenizes again.

Prompts are truncated from the left (the end of a conversation matters most), completions from the right, to the
`tokenize.*` limits, or over-long pairs are dropped (`tokenize.overlong: drop`); every truncation and drop is counted.
`manifest.json` records each split's row count and a hash of its ids, so a training stage can assert that it trains on
exactly these rows (recent TRL versions drop rows whose prompt fills `max_length` without saying so).
"""
import hashlib
from collections import Counter

from rlhf.config import Tokenize
from rlhf.io import UserError

MANIFEST = "manifest.json"
COUNTS = ("truncated_prompt", "truncated_chosen", "truncated_rejected", "dropped_overlong_prompt",
          "dropped_overlong_chosen", "dropped_overlong_rejected", "dropped_empty_completion")


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode(row: dict, tokenizer) -> dict:
    """Token ids of one canonical row, split into prompt and completions as TRL's DPOTrainer does."""
    prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)
    chosen = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True, return_dict=True)
    rejected = tokenizer.apply_chat_template(row["prompt"] + row["rejected"], tokenize=True, return_dict=True)
    prompt, chosen, rejected = prompt["input_ids"], chosen["input_ids"], rejected["input_ids"]
    # The completion starts where the rendered prompt and prompt + answer diverge (templates may differ there).
    n = min(common_prefix_length(prompt, chosen), common_prefix_length(prompt, rejected))
    return {"id": row["id"], "prompt_ids": prompt[:n], "chosen_ids": chosen[n:], "rejected_ids": rejected[n:]}


def fit(example: dict, cfg: Tokenize, counts: Counter) -> dict | None:
    """`example` cut to the length limits (prompt from the left, completions from the right), or None to drop it."""
    over = {
        "prompt": len(example["prompt_ids"]) > cfg.max_prompt_length,
        "chosen": len(example["chosen_ids"]) > cfg.max_completion_length,
        "rejected": len(example["rejected_ids"]) > cfg.max_completion_length,
    }
    if not any(over.values()):
        return example
    if cfg.overlong == "drop":
        counts["dropped_overlong_" + next(k for k, v in over.items() if v)] += 1
        return None
    for key, is_over in over.items():
        counts[f"truncated_{key}"] += is_over
    return {
        **example,
        "prompt_ids": example["prompt_ids"][-cfg.max_prompt_length:],
        "chosen_ids": example["chosen_ids"][: cfg.max_completion_length],
        "rejected_ids": example["rejected_ids"][: cfg.max_completion_length],
    }


def tokenize_split(rows: list[dict], tokenizer, cfg: Tokenize) -> tuple[list[dict], Counter]:
    """Encoded and length-limited rows, and the counts of truncations and drops (every key in COUNTS)."""
    from tqdm import tqdm

    out, counts = [], Counter(dict.fromkeys(COUNTS, 0))
    for row in tqdm(rows, desc="tokenize", unit="row", mininterval=2):
        example = fit(encode(row, tokenizer), cfg, counts)
        if example is None:
            continue
        if not example["chosen_ids"] or not example["rejected_ids"]:
            counts["dropped_empty_completion"] += 1  # the template swallowed the answer: nothing to learn from
            continue
        out.append(example)
    if len(out) + sum(v for k, v in counts.items() if k.startswith("dropped")) != len(rows):
        raise RuntimeError(f"tokenize lost rows without counting them, a bug: {len(rows)} in, {len(out)} out, {counts}")
    return out, counts


def total_length(example: dict) -> int:
    return len(example["prompt_ids"]) + max(len(example["chosen_ids"]), len(example["rejected_ids"]))


def ids_hash(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def check_rows(dataset, manifest: dict, split: str) -> None:
    """Raise if `dataset` does not hold exactly the rows the tokenize stage wrote for `split`, in the same order."""
    expected = manifest[split]
    ids = list(dataset["id"])
    if len(ids) != expected["rows"] or ids_hash(ids) != expected["ids_sha256"]:
        raise UserError(
            f"the {split} data about to be trained on has {len(ids)} rows, but the tokenize stage wrote "
            f"{expected['rows']} (or the ids differ): some rows were dropped or changed on the way. Check the "
            "trainer's max_length against tokenize.max_prompt_length + tokenize.max_completion_length."
        )


def sft_columns(example: dict) -> dict:
    """SFTTrainer's pre-tokenized columns: prompt + chosen, with the loss on the completion only."""
    return {
        "input_ids": example["prompt_ids"] + example["chosen_ids"],
        "completion_mask": [0] * len(example["prompt_ids"]) + [1] * len(example["chosen_ids"]),
    }


def reward_columns(example: dict) -> dict:
    """RewardTrainer's pre-tokenized columns: whole sequences, prompt included."""
    return {
        "chosen_ids": example["prompt_ids"] + example["chosen_ids"],
        "rejected_ids": example["prompt_ids"] + example["rejected_ids"],
    }


def legacy_pair_columns(example: dict) -> dict:
    """The columns TRL's older pairwise trainers (ORPO, CPO/SimPO in trl.experimental) build in `tokenize_row`:
    whole sequences with labels masked (-100) on the prompt."""
    prompt = example["prompt_ids"]
    out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for key in ("chosen", "rejected"):
        ids = prompt + example[f"{key}_ids"]
        out[f"{key}_input_ids"] = ids
        out[f"{key}_attention_mask"] = [1] * len(ids)
        out[f"{key}_labels"] = [-100] * len(prompt) + example[f"{key}_ids"]
    return out


def unpaired_columns(batch: dict) -> dict:
    """KTO's unpaired rows from a batch of pairs: (prompt, chosen, desirable) and (prompt, rejected, undesirable)."""
    n = len(batch["prompt_ids"])
    return {"prompt_ids": batch["prompt_ids"] * 2, "completion_ids": batch["chosen_ids"] + batch["rejected_ids"],
            "label": [True] * n + [False] * n}
