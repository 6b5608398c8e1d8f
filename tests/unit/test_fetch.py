"""fetch: every source kind and file type, sampling, column mapping, and bad input named precisely."""
import csv
import gzip
import json
from pathlib import Path

import pytest

from rlhf import fetch
from rlhf.fetch import DataError
from tests.conftest import SHARED_DATA, repo_params, repo_section

ROWS = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]


def fetched(cfg, seed, **kwargs):
    """fetch's rows, read to the end, and its stats (complete once the rows are read)."""
    lines, stats = fetch.fetch(cfg, seed, **kwargs)
    return [json.loads(line) for line in lines], stats


def canonical(i):
    return {"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "assistant", "content": f"bad {i}"}]}


def write(path, rows):
    if path.name.endswith(".csv"):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        text = json.dumps(rows) if path.name.endswith((".json", ".json.gz")) else "".join(
            json.dumps(r) + "\n" for r in rows)
        if path.name.endswith(".gz"):
            with gzip.open(path, "wt") as f:
                f.write(text)
        else:
            path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.json", "d.json.gz", "d.csv", "d.csv.gz", "d.parquet"])
def test_every_file_type_gives_the_same_rows(tmp_path, name):
    path = tmp_path / name
    if name == "d.csv.gz":
        write(tmp_path / "d.csv", ROWS)
        path.write_bytes(gzip.compress((tmp_path / "d.csv").read_bytes()))
    else:
        write(path, ROWS)
    rows, stats = fetched(repo_section("data", source=str(path)), seed=0)
    assert rows == [{"id": f"row-{i + 1}", **canonical(i)} for i in range(10)]
    assert stats["rows_read"] == 10 and stats["rows_fetched"] == 10 and stats["kind"] == "file"
    assert len(stats["sha256"]) == 64


def test_json_object_wrapping_a_list(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": ROWS}))
    assert len(fetched(repo_section("data", source=str(path)), seed=0)[0]) == 10


def test_local_folder_goes_through_load_dataset(tmp_path):
    """A folder of data files is read by datasets.load_dataset, the same code path as a hub id."""
    folder = tmp_path / "my_dataset" / "data"
    folder.mkdir(parents=True)
    write(folder / "train-00000.jsonl", ROWS[:6])
    write(folder / "test-00000.jsonl", ROWS[6:])
    rows, stats = fetched(repo_section("data", source=str(tmp_path / "my_dataset"), split="test"), seed=0)
    assert [r["prompt"][0]["content"] for r in rows] == ["q6", "q7", "q8", "q9"]
    assert stats["kind"] == "datasets" and stats["fingerprint"]


def test_saved_dataset_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "saved"))
    rows, _ = fetched(repo_section("data", source=str(tmp_path / "saved")), seed=0)
    assert len(rows) == 10


def test_unreachable_hub_id_is_a_clear_error():
    with pytest.raises(DataError, match=r"could not be loaded with the datasets library.*local file or folder"):
        fetched(repo_section("data", source="no-such-org/no-such-dataset"), seed=0)


def test_builtin_source_and_unknown_task():
    rows, stats = fetched(repo_params({"data.builtin.num_pairs": 50}).data, seed=0)
    assert len(rows) == 50 and rows[0]["id"] == "sentiment-0" and stats["kind"] == "builtin"
    assert rows == fetched(repo_params({"data.builtin.num_pairs": 50}).data, seed=0)[0]
    with pytest.raises(DataError, match="unknown built-in task; available: builtin:sentiment"):
        fetched(repo_section("data", source="builtin:nope"), seed=0)


def test_sampling_is_seeded_ordered_and_counted(tmp_path):
    path = write(tmp_path / "d.jsonl", [{**r, "prompt": f"q{i}"} for i, r in enumerate(ROWS * 10)])
    a, stats = fetched(repo_section("data", source=str(path), sample_ratio=0.3), seed=1)
    b, _ = fetched(repo_section("data", source=str(path), sample_ratio=0.3), seed=1)
    c, _ = fetched(repo_section("data", source=str(path), sample_ratio=0.3), seed=2)
    assert a == b and a != c and len(a) == 30
    assert stats["sampled_out"] == 70
    numbers = [int(r["id"].split("-")[1]) for r in a]
    assert numbers == sorted(numbers)
    capped, stats = fetched(repo_section("data", source=str(path), sample_ratio=0.3, max_rows=5), seed=1)
    assert capped == a[:5] and stats["sampled_out"] == 95


def test_column_mapping_and_source_ids(tmp_path):
    rows = [{"uid": f"u{i}", "question": f"q{i}", "good": f"good {i}", "bad": f"bad {i}"} for i in range(3)]
    path = write(tmp_path / "d.jsonl", rows)
    cols = {"id": "uid", "prompt": "question", "chosen": "good", "rejected": "bad"}
    out, _ = fetched(repo_section("data", source=str(path), columns=cols), seed=0)
    assert out == [{"id": f"u{i}", **canonical(i)} for i in range(3)]


def test_duplicate_source_ids_are_made_unique(tmp_path):
    path = write(tmp_path / "d.jsonl", [{**r, "id": 7} for r in ROWS[:3]])
    assert [r["id"] for r in fetched(repo_section("data", source=str(path)), seed=0)[0]] == ["7", "7#2", "7#3"]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"no such local file or folder"):
        fetched(repo_section("data", source=str(tmp_path / "missing.jsonl")), seed=0)


def test_unknown_format_lists_columns_and_mentions_mapping(tmp_path):
    path = write(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"d\.jsonl, row 1: unknown dataset format.*\['answer', 'question'\].*data\.columns"):
        fetched(repo_section("data", source=str(path)), seed=0)


def test_mapped_column_missing(tmp_path):
    path = write(tmp_path / "d.jsonl", ROWS[:2])
    with pytest.raises(DataError, match=r"row 1, field 'question': column missing"):
        fetched(repo_section("data", source=str(path), columns={"prompt": "question"}), seed=0)


def bad_file(tmp_path):
    lines = [json.dumps(ROWS[0]), "{not json", json.dumps({**ROWS[1], "chosen": 5}), json.dumps(ROWS[2]), "[1, 2]"]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_row_error_names_file_line_and_field(tmp_path):
    with pytest.raises(DataError, match=r"bad\.jsonl, row 2, field 'json': not valid JSON.*data\.on_bad_rows: skip"):
        fetched(repo_section("data", source=str(bad_file(tmp_path))), seed=0)


def test_bad_rows_skipped_and_counted(tmp_path):
    rows, stats = fetched(repo_section("data", source=str(bad_file(tmp_path)), on_bad_rows="skip"), seed=0)
    assert [r["id"] for r in rows] == ["row-1", "row-4"]
    assert stats["skipped_bad_rows"] == 3
    assert stats["skipped_bad_row_json"] == 2 and stats["skipped_bad_row_chosen"] == 1
    assert stats["rows_read"] == stats["rows_fetched"] + stats["skipped_bad_rows"] + stats["dropped_tie"]
    assert any("row 3, field 'chosen'" in m for m in stats["bad_row_examples"])


def test_pairwise_ties_counted(tmp_path):
    rows = [{"prompt": "q", "response_a": "x", "response_b": "y", "winner": w} for w in ("model_a", "tie", "b")]
    out, stats = fetched(repo_section("data", source=str(write(tmp_path / "d.jsonl", rows))), seed=0)
    assert [r["chosen"][0]["content"] for r in out] == ["x", "y"]
    assert stats["dropped_tie"] == 1


def test_real_hh_rlhf_file():
    path = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
    if not path.exists():
        pytest.skip("../shared/data is absent")
    with pytest.raises(DataError, match=r"hh-rlhf-harmless-base-test\.jsonl\.gz, row \d+, field 'chosen/rejected'"):
        fetched(repo_section("data", source=str(path)), seed=0)
    rows, stats = fetched(repo_section("data", source=str(path), on_bad_rows="skip"), seed=0)
    assert stats["rows_read"] == 2312
    assert stats["rows_fetched"] + stats["skipped_bad_rows"] == 2312
    assert stats["skipped_bad_rows"] == stats["skipped_bad_row_chosen/rejected"] == 5
    assert all(r["prompt"][-1]["role"] == "user" for r in rows)


@pytest.mark.parametrize("num_proc, batch_size", [(2, 3), (2, 1000), (1, 1)])
def test_same_rows_and_stats_for_any_workers_and_batch_size(tmp_path, num_proc, batch_size):
    """Batches through worker processes give the rows, ids (duplicates numbered in file order), drop counts and bad-row
    examples of one batch in this process. Catches a lost or reordered batch, ids numbered per batch."""
    lines = [json.dumps({**r, "id": i % 4}) for i, r in enumerate(ROWS * 3)]
    lines[5], lines[17] = "{not json", json.dumps({**ROWS[0], "chosen": 5})
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    skip = repo_section("data", source=str(path), on_bad_rows="skip")
    for cfg in (skip, repo_section("data", source=str(path), on_bad_rows="skip", sample_ratio=0.5, max_rows=11)):
        assert fetched(cfg, 1, num_proc=num_proc, batch_size=batch_size) == fetched(cfg, 1)
    rows, stats = fetched(skip, 1, num_proc=num_proc, batch_size=batch_size)
    assert [r["id"] for r in rows[:6]] == ["0", "1", "2", "3", "0#2", "2#2"] and stats["skipped_bad_rows"] == 2
    with pytest.raises(DataError, match=r"row 6, field 'json'"):  # the first bad row in the file, not in a batch
        fetched(repo_section("data", source=str(path)), 1, num_proc=num_proc, batch_size=batch_size)


def test_line_separators_inside_json_strings_stay_in_their_row(tmp_path):
    """JSON lets U+2028 and U+0085 appear raw inside a string; a row holding them is one row, not three bad ones."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({**ROWS[0], "chosen": "good\u2028still good\x85end"}, ensure_ascii=False) + "\n")
    rows, stats = fetched(repo_section("data", source=str(path)), 0)
    assert rows[0]["chosen"][0]["content"] == "good\u2028still good\x85end" and stats["rows_fetched"] == 1


def test_relative_source_in_a_queued_experiment_starts_at_the_repository_root(tmp_path):
    """`dvc exp run --queue` runs in <root>/.dvc/tmp/exps/run/<id>/, a copy of the git-tracked files: a relative
    data.source missing there is read from <root>; one in the copy is read from the copy."""
    from rlhf.fetch import local_path

    root = tmp_path / "repo"
    copy = root / ".dvc/tmp/exps/run/abc123"
    copy.mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared/pairs.jsonl").write_text("{}\n")
    (copy / "tracked.jsonl").write_text("{}\n")
    assert local_path("../shared/pairs.jsonl", cwd=copy).resolve() == (tmp_path / "shared/pairs.jsonl").resolve()
    assert local_path("tracked.jsonl", cwd=copy) == Path("tracked.jsonl")
    assert local_path("../shared/pairs.jsonl", cwd=root) == Path("../shared/pairs.jsonl")  # the workspace: as written
