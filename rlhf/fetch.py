"""fetch: read `data.source` (built-in task, local file or folder, or hub dataset) into canonical preference rows.

Canonical row (TRL's conversational preference format plus a stable id):
    {"id": str, "prompt": [{"role", "content"}, ...], "chosen": [{"role": "assistant", ...}], "rejected": [...]}

Every row that does not make it is counted with its reason in the returned stats; nothing is dropped silently.
"""
import csv
import gzip
import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from rlhf import formats, stream, synthetic
from rlhf.config import Data
from rlhf.io import UserError, check_hub, looks_local

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
MAX_EXAMPLES = 5  # bad-row messages kept in the stats, so a `skip` run still shows what was wrong


class DataError(UserError, ValueError):
    """Bad input data: the message names the file, row and field, and says what to do."""


def fetch(cfg: Data, seed: int, num_proc: int = 1, batch_size: int = 1000) -> tuple[Iterator[str], dict]:
    """Canonical rows as JSON lines, and stats (counts by reason, provenance) for the source configured in `cfg`.

    The lines come from a generator that streams the source in batches of `batch_size` rows through `num_proc`
    worker processes; the stats are complete once it has been read to the end. Same rows and stats for any
    `num_proc` and `batch_size`."""
    items, origin, provenance = load_raw(cfg, seed)
    stats = {"source": cfg.source, **provenance}
    return _lines(items, origin, cfg, seed, num_proc, batch_size, stats), stats


def _lines(items, origin: str, cfg: Data, seed: int, num_proc: int, batch_size: int, stats: dict):
    """The rows that make it, as JSON lines with their ids; fills `stats` at the end (see `fetch`)."""
    from tqdm import tqdm

    total = sum(1 for _ in items()) if cfg.sample_ratio < 1 or cfg.max_rows else None
    fmt = detect_first(sample(items(), total, cfg.sample_ratio, cfg.max_rows, seed), cfg, origin)
    selected = sample(items(), total, cfg.sample_ratio, cfg.max_rows, seed)
    counts, examples, seen_ids, taken, fetched = Counter(), [], Counter(), 0, 0
    with tqdm(desc="fetch", unit="row", total=total, mininterval=2) as bar:
        for results in stream.parallel_map(normalize_batch, stream.batched(selected, batch_size), num_proc,
                                           columns=cfg.columns, fmt=fmt):
            bar.update(len(results))
            taken += len(results)  # one result per selected row
            for kind, number, *rest in results:
                if kind == "tie":
                    counts["dropped_tie"] += 1
                    continue
                if kind == "bad":
                    field_name, reason = rest
                    message = f"{origin}, row {number}, field '{field_name}': {reason}"
                    if cfg.on_bad_rows == "error":
                        raise bad_row(message)
                    counts[f"skipped_bad_row_{field_name}"] += 1
                    if len(examples) < MAX_EXAMPLES:
                        examples.append(message)
                    continue
                base_id, tail = rest
                seen_ids[base_id] += 1
                row_id = base_id if seen_ids[base_id] == 1 else f"{base_id}#{seen_ids[base_id]}"
                fetched += 1
                yield '{"id": ' + json.dumps(row_id, ensure_ascii=False) + ", " + tail
    stats["rows_read"] = taken if total is None else total
    stats["sampled_out"] = stats["rows_read"] - taken
    stats["skipped_bad_rows"] = sum(v for k, v in counts.items() if k.startswith("skipped_bad_row_"))
    stats["dropped_tie"] = counts.pop("dropped_tie", 0)
    stats.update(sorted(counts.items()))
    stats["rows_fetched"] = fetched
    stats["bad_row_examples"] = examples


def load_raw(cfg: Data, seed: int):
    """A function giving a fresh iterator of (row number, raw row) pairs each time it is called (a raw row is a dict,
    a line of JSON to parse, or a parse error), a name for error messages, and provenance of the source."""
    source = cfg.source
    if source.startswith("builtin:"):
        task = source.removeprefix("builtin:")
        if task not in synthetic.TASKS:
            raise DataError(f"data.source = {source!r}: unknown built-in task; available: "
                            f"{', '.join('builtin:' + t for t in synthetic.TASKS)}.")
        generate, _ = synthetic.TASKS[task]
        rows = generate(cfg.builtin.num_pairs, seed, cfg.builtin.label_noise)
        return lambda: enumerate(rows, 1), source, {"kind": "builtin"}
    path = Path(source).expanduser()
    if path.is_file():
        return lambda: read_file(path), str(path), {"kind": "file", "sha256": sha256(path)}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in SUFFIXES)
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _from_datasets(cfg, load_from_disk=True)
        if not files:
            raise DataError(f"data.source = {source!r} is a folder with no data files ({', '.join(SUFFIXES)}, "
                            "optionally .gz) and no saved dataset in it. Point it at a file or a dataset folder.")
        return _from_datasets(cfg)
    if looks_local(source) or _suffix(path) in SUFFIXES:
        raise DataError(f"data.source = {source!r}: no such local file or folder (looked in {path.resolve()}). "
                        "Check the path (relative paths start at the repository root); a hub id has the form "
                        "owner/name.")
    check_hub("data.source", source)
    return _from_datasets(cfg)


def read_file(path: Path):
    """(1-based row or line number, raw row) of a jsonl/json/csv/parquet file (gzip allowed), streamed where the file
    type allows it (jsonl, csv, parquet); a whole-file .json array is read at once."""
    suffix = _suffix(path)
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown file type; supported: {', '.join(SUFFIXES)} (optionally .gz).")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = (row for batch in pq.ParquetFile(path).iter_batches(batch_size=1000) for row in batch.to_pylist())
            yield from enumerate(rows, 1)
            return
        opener = gzip.open if path.suffix == ".gz" else open
        if suffix == ".csv":
            with opener(path, "rt", encoding="utf-8") as f:
                yield from enumerate(csv.DictReader(f), 1)
            return
        if suffix == ".json":
            with opener(path, "rt", encoding="utf-8") as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError:
                    data = None  # maybe JSON lines under a .json name
            if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
                data = next(iter(data.values()))  # {"data": [...]}
            if isinstance(data, list):
                yield from enumerate(data, 1)
                return
        yield from stream.lines(path)  # JSON lines, parsed by the workers
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read ({err}). Check that it is a UTF-8 text file, gzipped if it ends "
                        "in .gz.") from None


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

    def items():
        rows = (dict(zip(batch, values)) for batch in ds.iter(batch_size=1000) for values in zip(*batch.values()))
        return enumerate(rows, 1)

    provenance = {"kind": "datasets", "fingerprint": ds._fingerprint, "revision": cfg.revision}
    return items, f"{cfg.source} [{cfg.split}]", provenance


def sample(items, total: int | None, ratio: float, max_rows: int | None, seed: int):
    """A seeded random `ratio` of the `total` items in their original order, then at most `max_rows` of them."""
    keep = set(random.Random(seed).sample(range(total), round(total * ratio))) if ratio < 1.0 else None
    taken = 0
    for i, item in enumerate(items):
        if max_rows and taken >= max_rows:
            return
        if keep is None or i in keep:
            taken += 1
            yield item


def detect_first(items, cfg: Data, origin: str) -> str | None:
    """The format of the first row that parses and has the mapped columns (None if no row does). A bad row before it
    stops the stage here when data.on_bad_rows is error, as it would in the main pass."""
    for number, raw in items:
        row = _parse_line(raw) if isinstance(raw, str) else raw
        row = row if isinstance(row, Exception) else rename(row, cfg.columns)
        if not isinstance(row, Exception):
            return detect(row, origin, number)
        if cfg.on_bad_rows == "error":
            raise bad_row(f"{origin}, row {number}, field '{row.field}': {row}")
    return None


def bad_row(message: str) -> DataError:
    return DataError(f"{message}. Fix or remove the row, or set data.on_bad_rows: skip in params.yaml to drop such "
                     "rows (they are counted in metrics/data.json).")


def normalize_batch(items: list, columns: dict[str, str], fmt: str | None) -> list[tuple]:
    """One result per (number, raw row): ("row", number, base id, the canonical row as JSON after its leading brace),
    ("tie", number) for a pairwise tie, or ("bad", number, field, reason). Runs in the worker processes."""
    out = []
    for number, raw in items:
        try:
            row = _parse_line(raw) if isinstance(raw, str) else raw
            row = row if isinstance(row, Exception) else rename(row, columns)
            if isinstance(row, Exception):
                raise row
            canonical = formats.normalize_row(row, fmt)
        except formats.RowError as err:
            out.append(("bad", number, err.field, str(err)))
            continue
        if canonical is None:
            out.append(("tie", number))
            continue
        tail = json.dumps(canonical, ensure_ascii=False)[1:]  # the row's JSON line is {"id": ..., <tail>
        out.append(("row", number, str(row.get("id", f"row-{number}")), tail))
    return out


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
