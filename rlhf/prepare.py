"""prepare: filter the canonical rows, then split them into train and validation.

Train stays in a seeded random order: sorting it would break the i.i.d. batches SGD assumes. Validation is sorted
longest first, so each eval batch pads little and an out-of-memory error shows up at the first eval batch, not hours
into a run.
"""
import json
import random
from collections import Counter

from rlhf.config import Prepare
from rlhf.io import UserError


def text_of(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)


REASONS = ("empty_prompt", "empty_response", "identical_responses", "prompt_too_long", "response_too_long",
           "duplicate")


def drop_reason(row: dict, cfg: Prepare) -> str | None:
    """Why `row` must not be trained on, or None to keep it."""
    chosen, rejected = text_of(row["chosen"]), text_of(row["rejected"])
    if not text_of(row["prompt"]).strip():
        return "empty_prompt"
    if not chosen.strip() or not rejected.strip():
        return "empty_response"
    if chosen.strip() == rejected.strip():
        return "identical_responses"
    if len(text_of(row["prompt"])) > cfg.max_prompt_chars:
        return "prompt_too_long"
    if max(len(chosen), len(rejected)) > cfg.max_response_chars:
        return "response_too_long"
    return None


def filter_rows(rows: list[dict], cfg: Prepare) -> tuple[list[dict], dict]:
    """Rows that pass every filter, and the number dropped for each reason (keys `dropped_<reason>`, all present)."""
    kept, dropped, seen = [], Counter({f"dropped_{r}": 0 for r in REASONS}), set()
    for row in rows:
        reason = drop_reason(row, cfg)
        key = json.dumps([row["prompt"], row["chosen"], row["rejected"]], ensure_ascii=False)
        if reason is None and cfg.drop_duplicates and key in seen:
            reason = "duplicate"
        if reason:
            dropped[f"dropped_{reason}"] += 1
            continue
        seen.add(key)
        kept.append(row)
    return kept, dict(dropped)


def length(row: dict) -> int:
    """Characters of the longer of the two sequences a pair produces (prompt + chosen, prompt + rejected)."""
    return len(text_of(row["prompt"])) + max(len(text_of(row["chosen"])), len(text_of(row["rejected"])))


def split(rows: list[dict], validation_size: float | int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train in a seeded random order, validation sorted longest first with ties in id order)."""
    n_val = validation_size if isinstance(validation_size, int) else round(len(rows) * validation_size)
    if not 0 < n_val < len(rows):
        raise UserError(
            f"prepare.validation_size = {validation_size} gives {n_val} validation rows out of {len(rows)} after "
            "filtering; both splits need at least one row. Lower it, or give more data."
        )
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    validation = sorted((rows[i] for i in order[:n_val]), key=lambda r: (-length(r), r["id"]))
    train = [rows[i] for i in order[n_val:]]
    return train, validation


def account(fetch_stats: dict, fetched: int, dropped: dict, train: int, validation: int) -> dict:
    """The data metrics: every row read, and where each one went. Raises if any row is unaccounted for."""
    counts = {k: v for k, v in fetch_stats.items() if isinstance(v, int)}
    metrics = {**counts, **dropped, "train_rows": train, "validation_rows": validation}
    lost_in_fetch = counts["rows_read"] - counts["sampled_out"] - counts["skipped_bad_rows"] - counts["dropped_tie"]
    if not lost_in_fetch == counts["rows_fetched"] == fetched == sum(dropped.values()) + train + validation:
        raise RuntimeError(f"row accounting does not add up, a bug: {metrics}")
    return metrics
