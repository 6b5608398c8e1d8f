"""prepare: filter the canonical rows, then split them into train and validation, streaming (see `prepare`).

The split is by prompt by default: all pairs of one prompt fall on the same side, so evaluation never asks a prompt
the policy was trained on (see `split` and `prompt_key`).

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

from rlhf import stream, synthetic
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


def digest(text: str, size: int = 16) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=size).digest()


def prompt_digest(prompt: list[dict]) -> int:
    """A 64-bit number for the prompt's `prompt_key`, kept in an array at 8 bytes a row. Two prompts that collide
    (odds below 1 in 10^7 at a million prompts) only share a split, which never lets a prompt leak."""
    return int.from_bytes(digest(prompt_key(prompt), 8), "little", signed=True)


def prompt_key(prompt: list[dict]) -> str:
    """What makes two prompts the same prompt: every turn (system included) with its role, whitespace runs collapsed
    and case folded, so "How was the pizza?" and "how was  the Pizza?" are one prompt and share a split."""
    return json.dumps([[m["role"], " ".join(m["content"].split()).casefold()] for m in prompt], ensure_ascii=False)


def subject_of(row: dict) -> str:
    """The built-in task's subject a row's prompt asks about, the group of `split_by: subject`."""
    subject = synthetic.prompt_subject(text_of(row["prompt"]))
    if subject is None:
        raise UserError(
            f"prepare.split_by = subject, but row {row['id']!r} asks about none of the built-in task's subjects "
            f"({', '.join(synthetic.SUBJECTS)}). Use split_by: subject with data.source: builtin:sentiment only, "
            "or split_by: prompt.")
    return subject


def checks(lines: list[bytes], cfg: Prepare) -> list[tuple[str | None, bytes, int, str | None]]:
    """(drop reason or None, row digest, `prompt_digest`, subject) for each JSON line of canonical rows. Runs in the
    worker processes. The row digest stands for the row in the duplicate check (a 128-bit collision is not a
    concern); the subject is None unless `cfg.split_by` is subject."""
    out = []
    for line in lines:
        row = json.loads(line)
        key = json.dumps([row["prompt"], row["chosen"], row["rejected"]], ensure_ascii=False)
        reason = drop_reason(row, cfg)
        subject = subject_of(row) if cfg.split_by == "subject" and reason is None else None
        out.append((reason, digest(key), prompt_digest(row["prompt"]), subject))
    return out


def filter_rows(checked, drop_duplicates: bool) -> tuple[array, array, list, dict]:
    """Positions of the rows that pass every filter (of a duplicate, the first one), their prompt digests and
    subjects, and the number dropped for each reason (keys `dropped_<reason>`, all present). `checked`: per row, in
    order, from `checks`."""
    kept, prompts, subjects = array("q"), array("q"), []
    dropped, seen = Counter({f"dropped_{r}": 0 for r in REASONS}), set()
    for i, (reason, key, prompt, subject) in enumerate(checked):
        if reason is None and drop_duplicates and key in seen:
            reason = "duplicate"
        if reason:
            dropped[f"dropped_{reason}"] += 1
            continue
        seen.add(key)
        kept.append(i)
        prompts.append(prompt)
        subjects.append(subject)
    return kept, prompts, subjects, dict(dropped)


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


def split(groups, validation_size: float | int, seed: int) -> tuple[list[int], list[int]]:
    """Positions (0 to n - 1) of the train rows in a seeded random order, and of the validation rows (sort them with
    `longest_first`). `groups[i]` is row i's group: all rows of a group fall on the same side.

    The distinct groups, in the order they first appear, are shuffled with `seed` and go to validation, whole, in
    that order until it holds `validation_size` rows (a count, or that fraction of n, rounded) or more, by less than
    one group. Every group has the same chance whatever its size, so validation keeps the data's mix of frequent and
    rare prompts. Train is every other row, in a seeded random order of rows. With every row its own group
    (`range(n)`), this is the plain seeded row split, row for row the same as before prompts were grouped."""
    n = len(groups)
    n_val = validation_size if isinstance(validation_size, int) else round(n * validation_size)
    if not 0 < n_val < n:
        raise UserError(
            f"prepare.validation_size = {validation_size} gives {n_val} validation rows out of {n} after "
            "filtering; both splits need at least one row. Lower it, or give more data."
        )
    order, sizes = list(range(n)), Counter(groups)
    firsts = list(sizes)  # in order of first appearance, as a Counter keeps it
    random.Random(seed).shuffle(order)
    random.Random(seed).shuffle(firsts)  # the same permutation as `order` when every row is its own group
    held, taken = set(), 0
    for group in firsts:
        if taken >= n_val:
            break
        held.add(group)
        taken += sizes[group]
    if taken == n:
        raise UserError(
            f"prepare.validation_size = {validation_size} asks for {n_val} of {n} validation rows, but the rows "
            f"share only {len(sizes)} group(s) (prompts; subjects with split_by: subject), and taking whole groups "
            "until validation held that many rows took them all, leaving train empty. Lower "
            "prepare.validation_size, or give data with more distinct prompts.")
    return [i for i in order if groups[i] not in held], [i for i in order if groups[i] in held]


def prompt_counts(prompts: list, train: list[int], validation: list[int]) -> dict:
    """Distinct prompts per split, and how many validation prompts train also holds (0 unless split_by is row)."""
    in_train, in_validation = {prompts[i] for i in train}, {prompts[i] for i in validation}
    return {"train_prompts": len(in_train), "validation_prompts": len(in_validation),
            "validation_prompts_in_train": len(in_train & in_validation)}


def longest_first(row: dict) -> tuple:
    """Sort key of the validation split: longest first, ties in id order."""
    return -length(row), row["id"]


def prepare(rows_file: Path, out: Path, cfg: Prepare, seed: int, num_proc: int = 1,
            batch_size: int = 1000) -> tuple[int, dict, int, int, dict]:
    """Filter the JSON lines of `rows_file` and write out/train.jsonl and out/validation.jsonl; returns the rows read,
    the drop counts, the two split sizes and `prompt_counts`. The rows are checked in batches by `num_proc` workers,
    then copied to their split by their offsets in `rows_file`: memory holds a few numbers and a digest per row,
    never the rows."""
    from tqdm import tqdm

    index = stream.LineIndex(rows_file)
    checked = (result for results in stream.parallel_map(checks, stream.batched(index.scan(), batch_size), num_proc,
                                                         cfg=cfg) for result in results)
    kept, prompts, subjects, dropped = filter_rows(tqdm(checked, desc="prepare", unit="row", mininterval=2),
                                                   cfg.drop_duplicates)
    check_any_left(len(index.offsets), dropped)
    groups = {"prompt": prompts, "subject": subjects, "row": range(len(kept))}[cfg.split_by]
    train, validation = split(groups, cfg.validation_size, seed)
    counts = prompt_counts(prompts, train, validation)
    keys = [longest_first(json.loads(line)) for line in index.read(kept[i] for i in validation)]
    validation = [i for _, i in sorted(zip(keys, validation))]  # ids are unique: no two keys are equal
    index.write((kept[i] for i in train), out / "train.jsonl")
    index.write((kept[i] for i in validation), out / "validation.jsonl")
    return len(index.offsets), dropped, len(train), len(validation), counts


def account(fetch_stats: dict, fetched: int, dropped: dict, train: int, validation: int, prompts: dict) -> dict:
    """The data metrics: every row read, where each one went, and the distinct prompts per split (`prompt_counts`).
    Raises if any row is unaccounted for."""
    counts = {k: v for k, v in fetch_stats.items() if isinstance(v, int)}
    metrics = {**counts, **dropped, "train_rows": train, "validation_rows": validation, **prompts}
    lost_in_fetch = counts["rows_read"] - counts["sampled_out"] - counts["skipped_bad_rows"] - counts["dropped_tie"]
    if not lost_in_fetch == counts["rows_fetched"] == fetched == sum(dropped.values()) + train + validation:
        raise RuntimeError(f"row accounting does not add up, a bug: {metrics}")
    return metrics


def run(params, paths) -> None:
    """The prepare stage: paths.prepared/train.jsonl and validation.jsonl, and paths.data_metrics (every row that left
    the pipeline so far, counted by reason, the split sizes, and the distinct prompts per split with
    `validation_prompts_in_train`, 0 unless prepare.split_by is row), written even when no row is left."""
    from rlhf.io import atomic_dir, read_json, write_json

    fetch_stats = read_json(Path(paths.fetched) / "fetch.json")
    try:
        with atomic_dir(paths.prepared) as tmp:
            rows, dropped, train, validation, prompts = prepare(
                Path(paths.fetched) / "rows.jsonl", tmp, params.prepare, params.seed,
                stream.workers(params.processing.num_proc), params.processing.batch_size)
            metrics = account(fetch_stats, rows, dropped, train, validation, prompts)
    except NothingLeft as err:  # no output, but the metrics show where every row went
        write_json(paths.data_metrics, account(fetch_stats, err.rows, err.dropped, 0, 0, prompt_counts([], [], [])))
        raise
    write_json(paths.data_metrics, metrics)
    print(f"prepare: {rows} rows -> {train} train, {validation} validation (split by {params.prepare.split_by}); "
          f"{prompts}; {dropped}")
