"""fetch: read `data.source` (built-in task, local file or folder, or hub dataset) into canonical preference rows.

Canonical row (TRL's conversational preference format plus a stable id):
    {"id": str, "prompt": [{"role", "content"}, ...], "chosen": [{"role": "assistant", ...}], "rejected": [...]}

Every row that does not make it is counted with its reason in the returned stats; nothing is dropped silently.
"""
import csv
import gzip
import hashlib
import io
import json
import random
from collections import Counter
from pathlib import Path

from rlhf import formats, synthetic
from rlhf.config import Data
from rlhf.io import UserError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
MAX_EXAMPLES = 5  # bad-row messages kept in the stats, so a `skip` run still shows what was wrong


class DataError(UserError, ValueError):
    """Bad input data: the message names the file, row and field, and says what to do."""


def fetch(cfg: Data, seed: int) -> tuple[list[dict], dict]:
    """Canonical rows and stats (counts by reason, provenance) for the source configured in `cfg`."""
    rows, origin, provenance = load_raw(cfg, seed)
    stats = {"source": cfg.source, **provenance, "rows_read": len(rows)}
    rows = sample(rows, cfg.sample_ratio, cfg.max_rows, seed)
    stats["sampled_out"] = stats["rows_read"] - len(rows)
    canonical, counts, examples = normalize(rows, cfg, origin)
    stats["skipped_bad_rows"] = sum(v for k, v in counts.items() if k.startswith("skipped_bad_row_"))
    stats["dropped_tie"] = counts.pop("dropped_tie", 0)
    stats.update(counts)
    stats["rows_fetched"] = len(canonical)
    stats["bad_row_examples"] = examples
    return canonical, stats


def load_raw(cfg: Data, seed: int) -> tuple[list[tuple[int, dict | Exception]], str, dict]:
    """(row number, raw row or parse error) pairs, a name for error messages, and provenance of the source."""
    source = cfg.source
    if source.startswith("builtin:"):
        task = source.removeprefix("builtin:")
        if task not in synthetic.TASKS:
            raise DataError(f"data.source = {source!r}: unknown built-in task; available: "
                            f"{', '.join('builtin:' + t for t in synthetic.TASKS)}.")
        generate, _ = synthetic.TASKS[task]
        rows = generate(cfg.builtin.num_pairs, seed, cfg.builtin.label_noise)
        return list(enumerate(rows, 1)), source, {"kind": "builtin"}
    path = Path(source).expanduser()
    if path.is_file():
        return read_file(path), str(path), {"kind": "file", "sha256": sha256(path)}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in SUFFIXES)
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _from_datasets(cfg, load_from_disk=True)
        if not files:
            raise DataError(f"data.source = {source!r} is a folder with no data files ({', '.join(SUFFIXES)}, "
                            "optionally .gz) and no saved dataset in it. Point it at a file or a dataset folder.")
        return _from_datasets(cfg)
    if source.startswith((".", "/", "~")) or _suffix(path) in SUFFIXES:
        raise DataError(f"data.source = {source!r}: no such file or folder (looked in {path.resolve()}). "
                        "Check the path; relative paths start at the repository root.")
    return _from_datasets(cfg)


def read_file(path: Path) -> list[tuple[int, dict | Exception]]:
    """Rows of a jsonl/json/csv/parquet file (gzip allowed): (1-based row or line number, row or parse error)."""
    suffix = _suffix(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        return list(enumerate(pq.read_table(path).to_pylist(), 1))
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown file type; supported: {', '.join(SUFFIXES)} (optionally .gz).")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read ({err}). Check that it is a UTF-8 text file, gzipped if it ends "
                        "in .gz.") from None
    if suffix == ".csv":
        return list(enumerate(csv.DictReader(io.StringIO(text)), 1))
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSON lines under a .json name
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]}
        if isinstance(data, list):
            return list(enumerate(data, 1))
    return [(n, _parse_line(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _parse_line(line: str) -> dict | Exception:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return formats.RowError("json", f"not valid JSON ({err.msg} at column {err.colno})")
    return row if isinstance(row, dict) else formats.RowError("json", f"expected a JSON object, got {row!r:.60}")


def _from_datasets(cfg: Data, load_from_disk: bool = False):
    """Rows through the `datasets` library: a saved dataset, a local dataset folder, or a hub id."""
    import datasets

    try:
        if load_from_disk:
            ds = datasets.load_from_disk(cfg.source)
        else:
            ds = datasets.load_dataset(cfg.source, cfg.name, split=cfg.split, revision=cfg.revision)
    except Exception as err:  # the library raises many types; the user needs one message
        raise DataError(
            f"data.source = {cfg.source!r} (data.name = {cfg.name!r}, data.split = {cfg.split!r}) could not be loaded "
            f"with the datasets library: {type(err).__name__}: {' '.join(str(err).split())} Check the id, config name and split; without "
            "network access use a local file or folder instead."
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if cfg.split not in ds:
            raise DataError(f"data.source = {cfg.source!r} has splits {list(ds)}, not data.split = {cfg.split!r}.")
        ds = ds[cfg.split]
    provenance = {"kind": "datasets", "fingerprint": ds._fingerprint, "revision": cfg.revision}
    return list(enumerate(ds, 1)), f"{cfg.source} [{cfg.split}]", provenance


def sample(rows: list, ratio: float, max_rows: int | None, seed: int) -> list:
    """A seeded random `ratio` of the rows in their original order, then at most `max_rows` of them."""
    if ratio < 1.0:
        keep = sorted(random.Random(seed).sample(range(len(rows)), round(len(rows) * ratio)))
        rows = [rows[i] for i in keep]
    return rows[:max_rows] if max_rows else rows


def normalize(rows: list, cfg: Data, origin: str) -> tuple[list[dict], dict, list[str]]:
    """Canonical rows, counts of dropped rows by reason, and the first few bad-row messages."""
    out, counts, examples, seen_ids = [], Counter(), [], Counter()
    fmt = None
    for number, raw in rows:
        try:
            row = raw if isinstance(raw, Exception) else rename(raw, cfg.columns)
            if isinstance(row, Exception):
                raise row
            fmt = fmt or detect(row, origin, number)
            canonical = formats.normalize_row(row, fmt)
        except formats.RowError as err:
            message = f"{origin}, row {number}, field '{err.field}': {err}"
            if cfg.on_bad_rows == "error":
                raise DataError(f"{message}. Fix or remove the row, or set data.on_bad_rows: skip in params.yaml to "
                                "drop such rows (they are counted in metrics/data.json).") from None
            counts[f"skipped_bad_row_{err.field}"] += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append(message)
            continue
        if canonical is None:
            counts["dropped_tie"] += 1
            continue
        base_id = str(row.get("id", f"row-{number}"))
        seen_ids[base_id] += 1
        row_id = base_id if seen_ids[base_id] == 1 else f"{base_id}#{seen_ids[base_id]}"
        out.append({"id": row_id, **canonical})
    return out, dict(sorted(counts.items())), examples


def rename(row: dict, columns: dict[str, str]) -> dict | formats.RowError:
    """Apply data.columns (our name -> the dataset's column name) to one row."""
    missing = [src for src in columns.values() if src not in row]
    if missing:
        return formats.RowError(missing[0], f"column missing (data.columns maps it); the row has {sorted(row)}")
    renamed = {k: v for k, v in row.items() if k not in columns.values()}
    renamed.update({ours: row[src] for ours, src in columns.items()})
    return renamed


def detect(row: dict, origin: str, number: int) -> str:
    try:
        return formats.detect_format(row)
    except ValueError as err:
        raise DataError(f"{origin}, row {number}: unknown dataset format. {err}") from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _suffix(path: Path) -> str:
    suffixes = path.suffixes
    return suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else path.suffix
