"""prepare: filter the canonical rows, then split them into train and validation, streaming (see `prepare`).

Train stays in a seeded random order: sorting it would break the i.i.d. batches SGD assumes. Validation is sorted
longest first, so each eval batch pads little and an out-of-memory error shows up at the first eval batch, not hours
into a run.
"""
import hashlib
import json
import random
from array import array
from collections import Counter
from pathlib import Path

from rlhf import stream
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


def checks(lines: list[bytes], cfg: Prepare) -> list[tuple[str | None, bytes]]:
    """(drop reason or None, a 16-byte digest of the row's content) for each JSON line of canonical rows. Runs in the
    worker processes; the digest stands for the row in the duplicate check (a 128-bit collision is not a concern)."""
    out = []
    for line in lines:
        row = json.loads(line)
        key = json.dumps([row["prompt"], row["chosen"], row["rejected"]], ensure_ascii=False)
        out.append((drop_reason(row, cfg), hashlib.blake2b(key.encode(), digest_size=16).digest()))
    return out


def filter_rows(checked, drop_duplicates: bool) -> tuple[array, dict]:
    """Positions of the rows that pass every filter (of a duplicate, the first one), and the number dropped for each
    reason (keys `dropped_<reason>`, all present). `checked`: (reason, digest) per row, in order, from `checks`."""
    kept, dropped, seen = array("q"), Counter({f"dropped_{r}": 0 for r in REASONS}), set()
    for i, (reason, key) in enumerate(checked):
        if reason is None and drop_duplicates and key in seen:
            reason = "duplicate"
        if reason:
            dropped[f"dropped_{reason}"] += 1
            continue
        seen.add(key)
        kept.append(i)
    return kept, dict(dropped)


class NothingLeft(UserError):
    """Every row was filtered out; carries the counts, so the stage can still write metrics/data.json."""

    def __init__(self, rows: int, dropped: dict):
        self.rows, self.dropped = rows, dropped
        reasons = ", ".join(f"{n:,} {key.removeprefix('dropped_')}" for key, n in
                            sorted(dropped.items(), key=lambda kv: -kv[1]) if n)
        super().__init__(
            f"all {rows:,} rows were dropped by the prepare filters ({reasons or 'none read'}); counts are in "
            "metrics/data.json. Check that data.columns maps chosen and rejected to different columns and the prompt "
            "to the right one, and raise prepare.max_prompt_chars / prepare.max_response_chars if the texts are long.")


def check_any_left(rows: int, dropped: dict) -> None:
    if rows == sum(dropped.values()):
        raise NothingLeft(rows, dropped)


def length(row: dict) -> int:
    """Characters of the longer of the two sequences a pair produces (prompt + chosen, prompt + rejected)."""
    return len(text_of(row["prompt"])) + max(len(text_of(row["chosen"])), len(text_of(row["rejected"])))


def split(n: int, validation_size: float | int, seed: int) -> tuple[list[int], list[int]]:
    """Positions (0 to n - 1) of the train rows in a seeded random order, and of the validation rows (sort them with
    `longest_first`)."""
    n_val = validation_size if isinstance(validation_size, int) else round(n * validation_size)
    if not 0 < n_val < n:
        raise UserError(
            f"prepare.validation_size = {validation_size} gives {n_val} validation rows out of {n} after "
            "filtering; both splits need at least one row. Lower it, or give more data."
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[n_val:], order[:n_val]


def longest_first(row: dict) -> tuple:
    """Sort key of the validation split: longest first, ties in id order."""
    return -length(row), row["id"]


def prepare(rows_file: Path, out: Path, cfg: Prepare, seed: int, num_proc: int = 1,
            batch_size: int = 1000) -> tuple[int, dict, int, int]:
    """Filter the JSON lines of `rows_file` and write out/train.jsonl and out/validation.jsonl; returns the rows read,
    the drop counts and the two split sizes. The rows are checked in batches by `num_proc` workers, then copied to
    their split by their offsets in `rows_file`: memory holds a few numbers per row, never the rows."""
    from tqdm import tqdm

    index = stream.LineIndex(rows_file)
    checked = (result for results in stream.parallel_map(checks, stream.batched(index.scan(), batch_size), num_proc,
                                                         cfg=cfg) for result in results)
    kept, dropped = filter_rows(tqdm(checked, desc="prepare", unit="row", mininterval=2), cfg.drop_duplicates)
    check_any_left(len(index.offsets), dropped)
    train, validation = split(len(kept), cfg.validation_size, seed)
    keys = [longest_first(json.loads(line)) for line in index.read(kept[i] for i in validation)]
    validation = [i for _, i in sorted(zip(keys, validation))]  # ids are unique: no two keys are equal
    index.write((kept[i] for i in train), out / "train.jsonl")
    index.write((kept[i] for i in validation), out / "validation.jsonl")
    return len(index.offsets), dropped, len(train), len(validation)


def account(fetch_stats: dict, fetched: int, dropped: dict, train: int, validation: int) -> dict:
    """The data metrics: every row read, and where each one went. Raises if any row is unaccounted for."""
    counts = {k: v for k, v in fetch_stats.items() if isinstance(v, int)}
    metrics = {**counts, **dropped, "train_rows": train, "validation_rows": validation}
    lost_in_fetch = counts["rows_read"] - counts["sampled_out"] - counts["skipped_bad_rows"] - counts["dropped_tie"]
    if not lost_in_fetch == counts["rows_fetched"] == fetched == sum(dropped.values()) + train + validation:
        raise RuntimeError(f"row accounting does not add up, a bug: {metrics}")
    return metrics


def run(params, paths) -> None:
    """The prepare stage: paths.prepared/train.jsonl and validation.jsonl, and paths.data_metrics (every row that left
    the pipeline so far, counted by reason, and the split sizes), written even when no row is left."""
    from rlhf.io import atomic_dir, read_json, write_json

    fetch_stats = read_json(Path(paths.fetched) / "fetch.json")
    try:
        with atomic_dir(paths.prepared) as tmp:
            rows, dropped, train, validation = prepare(
                Path(paths.fetched) / "rows.jsonl", tmp, params.prepare, params.seed,
                stream.workers(params.processing.num_proc), params.processing.batch_size)
            metrics = account(fetch_stats, rows, dropped, train, validation)
    except NothingLeft as err:  # no output, but the metrics show where every row went
        write_json(paths.data_metrics, account(fetch_stats, err.rows, err.dropped, 0, 0))
        raise
    write_json(paths.data_metrics, metrics)
    print(f"prepare: {rows} rows -> {train} train, {validation} validation; {dropped}")
