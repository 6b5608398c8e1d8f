"""fetch: read `data.source` (built-in task, local file or folder, or hub dataset) into canonical preference rows.

Canonical row (TRL's conversational preference format plus a stable id):
    {"id": str, "prompt": [{"role", "content"}, ...], "chosen": [{"role": "assistant", ...}], "rejected": [...]}

Every row that does not make it is counted with its reason in the returned stats; nothing is dropped silently.
"""
import codecs
import csv
import dataclasses
import gzip
import hashlib
import json
import random
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from rlhf import formats, stream, synthetic
from rlhf.config import Data
from rlhf.io import UserError, check_hub, looks_local

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
READERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}  # datasets' reader per type
MAX_EXAMPLES = 5  # bad-row messages kept in the stats, so a `skip` run still shows what was wrong


class DataError(UserError, ValueError):
    """Bad input data: the message names the file, row and field, and says what to do."""


def local_path(source: str, cwd: Path | None = None) -> Path:
    """`source` as a local path. A relative one starts at the repository root: the working directory, except in a
    queued or temporary DVC experiment, which runs in a copy under <root>/.dvc/tmp/exps/ that holds only the files git
    tracks; there a path missing from the copy (e.g. ../shared/pairs.jsonl, or an untracked file) is read from <root>."""
    path = Path(source).expanduser()
    cwd = cwd or Path.cwd()
    if path.is_absolute() or (cwd / path).exists():
        return path
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i]) / path
    return path


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
    counts, examples, taken, fetched = Counter(), [], 0, 0
    used_ids, next_suffix = set(), {}
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
                row_id, tail = rest
                if row_id in used_ids:  # a duplicate: the first free "<id>#<n>", n from 2 (the id may hold '#')
                    n = next_suffix.get(row_id, 2)
                    while f"{row_id}#{n}" in used_ids:
                        n += 1
                    next_suffix[row_id], row_id = n + 1, f"{row_id}#{n}"
                    counts["renamed_duplicate_ids"] += 1
                used_ids.add(row_id)
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
    path = local_path(source)
    if path.exists():  # datasets reads a folder by its name: give it the resolved one
        cfg = dataclasses.replace(cfg, source=str(path))
    if path.is_file():
        return lambda: read_file(path, cfg.split), str(path), {"kind": "file", "sha256": sha256(path)}
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _from_datasets(cfg, load_from_disk=True)
        files = data_files(path)
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


def data_files(folder: Path) -> list[Path]:
    """The data files in `folder` that `datasets` sees (it skips hidden files and folders, and folders named __*).
    `datasets` reads a folder with one reader, chosen by the most common file type, and ignores the other files
    without a word: a folder of several types is refused here, naming them, rather than read in part."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _suffix(p) in SUFFIXES and not any(
        part.startswith(".") or (part.startswith("__") and part != p.name) for part in p.relative_to(folder).parts))
    by_reader = {}
    for p in files:
        by_reader.setdefault(READERS[_suffix(p)], []).append(p.relative_to(folder).as_posix())
    if len(by_reader) > 1:
        listed = "; ".join(f"{reader}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                           for reader, names in sorted(by_reader.items()))
        raise DataError(f"data.source = {str(folder)!r} holds data files of more than one type ({listed}). The "
                        "datasets library reads a folder with one reader and would ignore the files of the other "
                        "types. Keep one type in the folder (convert or move the others), or point data.source at "
                        "one file.")
    return files


def read_file(path: Path, split: str):
    """(1-based row or line number, raw row) of a jsonl/json/csv/parquet file (gzip allowed), streamed where the file
    type allows it (jsonl, csv, parquet); a whole-file .json document is read at once. A raw row that cannot be
    decoded is a RowError, so that data.on_bad_rows decides what happens to it."""
    suffix = _suffix(path)
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown file type; supported: {', '.join(SUFFIXES)} (optionally .gz).")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = (row for batch in pq.ParquetFile(path).iter_batches(batch_size=1000) for row in batch.to_pylist())
            yield from enumerate(rows, 1)
        elif suffix == ".csv":
            yield from csv_rows(path)
        elif suffix == ".json" and (rows := json_document(path, split)) is not None:
            yield from enumerate(rows, 1)
        else:
            yield from json_lines(path)  # parsed by the workers
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err}). Check that the file is readable.") from None


def physical_lines(path: Path):
    """(byte offset, line as bytes with its b'\\n') of a file, gunzipped if its name ends in .gz. A cut-off or corrupt
    gzip stream, the usual result of an interrupted download, is a DataError saying how far it was read."""
    number = offset = 0
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            for line in f:
                yield offset, line
                number, offset = number + 1, offset + len(line)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: the compressed data is cut off or corrupt after line {number} ({offset} bytes "
                        f"uncompressed): {err}. An interrupted download is the usual cause: download or compress the "
                        "file again (`gzip -t` checks it).") from None


def json_lines(path: Path):
    """(line number, line) of every line that is not blank; a line that is not UTF-8 comes as a RowError naming its
    byte offset. Lines end at '\\n', '\\r\\n' or '\\r' only (str.splitlines would also split inside a JSON string
    holding U+2028); a leading UTF-8 byte order mark is dropped, as utf-8-sig does."""
    number = 0
    for offset, line in physical_lines(path):
        body = line[:-2] if line.endswith(b"\r\n") else line.removesuffix(b"\n")
        for part in body.split(b"\r"):  # raw CR cannot occur inside a JSON string: here it ends a line
            number += 1
            if number == 1 and part.startswith(codecs.BOM_UTF8):
                part, offset = part[3:], offset + 3
            try:
                text = part.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, invalid_utf8(offset + err.start, number)
            else:
                if text.strip():
                    yield number, text
            offset += len(part) + 1


def csv_rows(path: Path):
    """(row number, row as a dict by the header's names) of a CSV file; a row with more or fewer fields than the
    header, or with bytes that are not UTF-8, comes as a RowError naming its line. Fields keep their bytes: a CRLF
    inside a quoted field stays CRLF (the csv module's newline='' contract)."""
    bad = {}  # line number -> byte offset of its first byte that is not UTF-8

    def text():
        for number, (offset, line) in enumerate(physical_lines(path), 1):
            if number == 1 and line.startswith(codecs.BOM_UTF8):
                line, offset = line[3:], offset + 3
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError as err:
                bad[number] = offset + err.start
                yield line.decode("utf-8", errors="replace")  # parse on, so skip can drop just this row

    reader = csv.reader(text())
    try:
        header, end, number = next(reader, None), reader.line_num, 0
        for record in reader:
            start, end = end + 1, reader.line_num
            if not record:  # a blank line, as csv.DictReader skips it
                continue
            number += 1
            offsets = [bad.pop(n) for n in range(start, end + 1) if n in bad]
            if offsets:
                yield number, invalid_utf8(offsets[0], start)
            elif len(record) != len(header):
                yield number, formats.RowError("csv", f"line {start} has {len(record)} fields, the header has "
                                                      f"{len(header)} ({', '.join(header)}); a value that holds a "
                                                      "comma must be in double quotes")
            else:
                yield number, dict(zip(header, record))
    except csv.Error as err:
        raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({err}). Fix the file, or convert it to "
                        ".jsonl.") from None


def invalid_utf8(offset: int, line: int) -> formats.RowError:
    return formats.RowError("utf-8", f"invalid UTF-8 at byte offset {offset} of the file (line {line}); "
                                     "`iconv -f <its encoding> -t utf-8` converts a file in another encoding")


def json_document(path: Path, split: str) -> list | None:
    """The rows of a .json file holding one JSON document: a list of rows, or an object of splits read by
    `data.split` (a single key holding a list, as {"data": [...]}, is read too). None when the file is not one
    JSON document (JSON lines under a .json name, say)."""
    raw = b"".join(line for _, line in physical_lines(path))
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        data = json.loads(raw[bom:].decode("utf-8"))
    except UnicodeDecodeError as err:
        try:
            json.loads(raw[bom:].decode("utf-8", errors="replace"))
        except json.JSONDecodeError:
            return None  # JSON lines: reported line by line
        offset = bom + err.start
        line = raw.count(b"\n", 0, offset) + 1
        raise DataError(f"{path}: invalid UTF-8 at byte offset {offset} of the file (line {line}). One JSON "
                        "document cannot lose a row, so fix the file (`iconv -f <its encoding> -t utf-8` converts a "
                        "file in another encoding).") from None
    except json.JSONDecodeError:
        return None
    if isinstance(data, dict):
        if split in data:
            data = data[split]
        elif len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))
        else:
            raise DataError(f"{path}: the top level is a JSON object with keys {list(data)[:10]}, none of them "
                            f"data.split = {split!r}. Give a list of rows ([{{...}}, ...]), an object of splits "
                            f"({{\"train\": [...], \"test\": [...]}}) read by data.split, or JSON lines (one row "
                            "per line, in a .jsonl file).")
    if not isinstance(data, list):
        raise DataError(f"{path}: the top level is a JSON {type(data).__name__}, not a list of rows.")
    return data


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
        row_id = f"row-{number}" if row.get("id") in (None, "") else str(row["id"])  # null or empty: no id
        tail = json.dumps(canonical, ensure_ascii=False)[1:]  # the row's JSON line is {"id": ..., <tail>
        if not utf8(row_id + tail):  # JSON allows a lone surrogate escape; rows.jsonl, being UTF-8, cannot hold it
            out.append(("bad", number, surrogate_field({"id": row_id, **canonical}),
                        "holds a lone surrogate (a \\ud800-\\udfff escape that is not half of a pair), which UTF-8 "
                        "cannot encode"))
            continue
        out.append(("row", number, row_id, tail))
    return out


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def surrogate_field(row: dict) -> str:
    """The first field of a row that holds a lone surrogate."""
    return next(k for k, v in row.items() if not utf8(json.dumps(v, ensure_ascii=False)))


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


def run(params, paths) -> None:
    """The fetch stage: paths.fetched/rows.jsonl and fetch.json (the counts of rows read, sampled out and skipped,
    with reasons, and where the data came from)."""
    from rlhf.io import atomic_dir, provenance, write_json

    with atomic_dir(paths.fetched) as tmp:
        lines, stats = fetch(params.data, params.seed, stream.workers(params.processing.num_proc),
                             params.processing.batch_size)
        with open(tmp / "rows.jsonl", "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        if not stats["rows_fetched"]:
            raise DataError(f"data.source = {params.data.source!r} gave no usable rows: {stats}. Check the source and "
                            "data.sample_ratio / data.max_rows.")
        # No params here: dvc.lock records them, and a param change that leaves the rows as they were must not change
        # this output's hash and so rerun every stage after it.
        write_json(tmp / "fetch.json", {**stats, "versions": provenance()["versions"]})
    print(f"fetch: {stats['rows_fetched']} rows from {params.data.source} -> {paths.fetched}")
