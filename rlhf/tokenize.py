"""tokenize: chat template + tokenizer, once, into the columns the TRL trainers consume.

Output columns per row: `id`, `prompt_ids`, `chosen_ids`, `rejected_ids` (DPO's pre-tokenized format: the completion
ids exclude the prompt). The other trainers' columns are concatenations of these (see `sft_columns` and
`reward_columns`), so no training stage tokenizes again.

The model's chat template renders each row; a row the template refuses (a system message for Gemma's template, see
`tokenize.system_message`), or a template that renders the prompt differently once an answer follows, stops the stage
with an error naming the row (README, "Chat templates").

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


def common_prefix_length(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def system_messages(messages: list[dict], how: str) -> list[dict]:
    """`messages` with system messages kept, dropped, or folded: their text goes in front of the next user message
    (for templates without a system role, such as Gemma's and Mistral's)."""
    if how == "keep":
        return messages
    out, pending = [], []
    for m in messages:
        if m["role"] == "system":
            pending.append(m["content"])
            continue
        if m["role"] == "user" and pending:
            if how == "fold_into_user":
                m = {"role": "user", "content": "\n\n".join(pending + [m["content"]])}
            pending = []
        out.append(m)
    return out


def render(tokenizer, messages: list[dict], row_id: str, **kwargs) -> str:
    """The chat template's text of `messages`; a template that refuses them is a UserError naming the row."""
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except TemplateError as err:
        if any(m["role"] == "system" for m in messages):
            hint = ("The row has a system message, which this chat template does not accept (Gemma's and Mistral's "
                    "have no system role): set tokenize.system_message to fold_into_user (its text goes in front of "
                    "the next user message) or drop.")
        else:
            hint = "Fix the row in your data, or give the model a chat template that accepts it."
        raise UserError(f"tokenize: the chat template refuses row {row_id!r}: {err}. {hint}") from None


def encode(row: dict, tokenizer, system_message: str) -> dict:
    """Token ids of one canonical row, split into prompt and completions as TRL's DPOTrainer does.

    The prompt is rendered with the generation prompt, as the model sees it when it answers; prompt + answer must
    start with exactly that text, or the model would be trained on a context it never sees (a UserError). The texts
    are tokenized without the tokenizer's own special tokens: the template writes BOS where the family wants one."""
    prompt = system_messages(row["prompt"], system_message)
    texts = {"prompt": render(tokenizer, prompt, row["id"], add_generation_prompt=True)}
    for key in ("chosen", "rejected"):
        texts[key] = render(tokenizer, prompt + row[key], row["id"])
        if not texts[key].startswith(texts["prompt"]):
            at = common_prefix_length(texts["prompt"], texts[key])
            raise UserError(
                f"tokenize: row {row['id']!r}: the chat template renders the prompt differently once an answer "
                f"follows it (the prompt alone reads {texts['prompt'][at:at + 60]!r} where prompt + answer reads "
                f"{texts[key][at:at + 60]!r}), so the model would be trained on a context it never sees when it "
                "answers. Some templates put the system message only in the last user turn or drop earlier "
                "reasoning: try tokenize.system_message: fold_into_user, or give the model a template whose prompt "
                "is a prefix of prompt + answer.")
    ids = {k: tokenizer(v, add_special_tokens=False)["input_ids"] for k, v in texts.items()}
    # Tokens may merge across the prompt/answer boundary: the completion starts where the token sequences diverge.
    n = min(common_prefix_length(ids["prompt"], ids["chosen"]), common_prefix_length(ids["prompt"], ids["rejected"]))
    return {"id": row["id"], "prompt_ids": ids["prompt"][:n], "chosen_ids": ids["chosen"][n:],
            "rejected_ids": ids["rejected"][n:]}


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
        example = fit(encode(row, tokenizer, cfg.system_message), cfg, counts)
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
