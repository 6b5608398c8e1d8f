"""fetch on hostile files, as users bring them (issue 21): each case ends in an error that names the file and line, or
in exact handling that is counted. Nothing is lost or changed silently."""
import codecs
import gzip
import json

import pytest

from rlhf import fetch
from rlhf.fetch import DataError
from tests.conftest import repo_section

ROWS = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
CSV = "prompt,chosen,rejected\r\n" + "".join(f"q{i},good {i},bad {i}\r\n" for i in range(6))


def fetched(cfg, **kwargs):
    """fetch's rows, read to the end and checked to be writable as UTF-8, and its stats."""
    lines, stats = fetch.fetch(cfg, 0, **kwargs)
    return [json.loads(line.encode("utf-8")) for line in lines], stats


def ids(cfg, **kwargs):
    return [r["id"] for r in fetched(cfg, **kwargs)[0]]


def jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_csv_row_with_a_field_too_many_or_too_few_is_a_bad_row(tmp_path):
    """An unquoted comma shifted the columns: prompt 'Say hello', chosen ' politely', and 'Go away.' vanished."""
    lines = CSV.splitlines(keepends=True)
    lines[2] = "Say hello, politely,Hello there!,Go away.\r\n"
    lines[4] = "q3,good 3\r\n"
    path = tmp_path / "d.csv"
    path.write_text("".join(lines), newline="")
    with pytest.raises(DataError, match=r"d\.csv, row 2, field 'csv': line 3 has 4 fields, the header has 3 .*"
                                        r"double quotes.*data\.on_bad_rows: skip"):
        fetched(repo_section("data", source=str(path)))
    rows, stats = fetched(repo_section("data", source=str(path), on_bad_rows="skip"))
    assert [r["id"] for r in rows] == ["row-1", "row-3", "row-5", "row-6"]
    assert stats["skipped_bad_row_csv"] == stats["skipped_bad_rows"] == 2 and stats["rows_read"] == 6


def test_folder_of_mixed_file_types_is_refused_naming_the_files(tmp_path):
    """datasets reads a folder with one reader: of .jsonl, .csv and .json files it silently read only some."""
    (tmp_path / "a.jsonl").write_bytes(jsonl(ROWS[:2]))
    (tmp_path / "b.csv").write_text(CSV)
    (tmp_path / "c.json").write_text(json.dumps(ROWS[2:4]))
    with pytest.raises(DataError, match=r"more than one type.*csv: b\.csv.*json: a\.jsonl, c\.json.*one type"):
        fetched(repo_section("data", source=str(tmp_path)))
    (tmp_path / "b.csv").rename(tmp_path / ".b.csv")  # hidden files, which datasets skips, do not count
    rows, stats = fetched(repo_section("data", source=str(tmp_path)))
    assert stats["rows_read"] == len(rows) == 4  # .json and .jsonl share datasets' json reader


@pytest.mark.parametrize("name", ["d.jsonl.gz", "d.csv.gz", "d.json.gz"])
def test_truncated_gzip_names_the_file_and_how_far_it_was_read(tmp_path, name):
    """An interrupted download: the gzip stream ends early (EOFError) or in the middle of a block."""
    raw = {"d.jsonl.gz": jsonl(ROWS * 200), "d.csv.gz": CSV.encode() * 200,
           "d.json.gz": json.dumps(ROWS * 200).encode()}
    data = gzip.compress(raw[name])
    path = tmp_path / name
    path.write_bytes(data[:len(data) // 2])
    for on_bad_rows in ("error", "skip"):  # nothing after the cut can be read, so skip cannot help
        with pytest.raises(DataError, match=rf"{name}: the compressed data is cut off or corrupt after line \d+ "
                                            r"\(\d+ bytes uncompressed\).*interrupted download"):
            fetched(repo_section("data", source=str(path), on_bad_rows=on_bad_rows))


@pytest.mark.parametrize("num_proc", [1, 2])
def test_lone_surrogate_is_a_bad_row_that_skip_drops(tmp_path, num_proc):
    """JSON allows the escape "\\ud83d" alone, but UTF-8 cannot encode it: rows.jsonl failed after validation."""
    rows = [ROWS[0], {**ROWS[1], "chosen": "broken \ud83d emoji"}, {**ROWS[2], "id": "\udc00"}, ROWS[3]]
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(rows))  # json.dumps escapes the surrogates, as a real file would have them
    with pytest.raises(DataError, match=r"d\.jsonl, row 2, field 'chosen': .*surrogate.*data\.on_bad_rows: skip"):
        fetched(repo_section("data", source=str(path)), num_proc=num_proc, batch_size=2)
    out, stats = fetched(repo_section("data", source=str(path), on_bad_rows="skip"), num_proc=num_proc, batch_size=2)
    assert [r["id"] for r in out] == ["row-1", "row-4"]
    assert stats["skipped_bad_row_chosen"] == stats["skipped_bad_row_id"] == 1


@pytest.mark.parametrize("num_proc", [1, 2])
def test_invalid_utf8_names_line_and_byte_offset_and_skip_drops_it(tmp_path, num_proc):
    good = [json.dumps(r).encode() for r in ROWS[:4]]
    bad = json.dumps(ROWS[4]).encode().replace(b"good 4", b"good \xff4")
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(good[:2] + [bad] + good[2:]) + b"\n")
    offset = len(good[0]) + len(good[1]) + 2 + bad.index(b"\xff")
    with pytest.raises(DataError, match=rf"d\.jsonl, row 3, field 'utf-8': invalid UTF-8 at byte offset {offset} "
                                        r"of the file \(line 3\)"):
        fetched(repo_section("data", source=str(path)), num_proc=num_proc)
    rows, stats = fetched(repo_section("data", source=str(path), on_bad_rows="skip"), num_proc=num_proc)
    assert [r["id"] for r in rows] == ["row-1", "row-2", "row-4", "row-5"]
    assert stats["skipped_bad_row_utf-8"] == stats["skipped_bad_rows"] == 1 and stats["rows_read"] == 5


def test_invalid_utf8_in_csv_names_line_and_byte_offset(tmp_path):
    data = CSV.encode().replace(b"good 2", b"go\xc3od 2")
    path = tmp_path / "d.csv"
    path.write_bytes(data)
    offset = data.index(b"\xc3")
    with pytest.raises(DataError, match=rf"d\.csv, row 3, field 'utf-8': invalid UTF-8 at byte offset {offset} "
                                        r"of the file \(line 4\)"):
        fetched(repo_section("data", source=str(path)))
    skip = repo_section("data", source=str(path), on_bad_rows="skip")
    assert ids(skip) == ["row-1", "row-2", "row-4", "row-5", "row-6"]


def test_json_object_of_splits_is_read_by_data_split(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"train": ROWS[:4], "test": ROWS[4:]}, indent=2))
    rows, _ = fetched(repo_section("data", source=str(path), split="test"))
    assert [r["prompt"][0]["content"] for r in rows] == ["q4", "q5"]
    with pytest.raises(DataError, match=r"d\.json: the top level is a JSON object with keys \['train', 'test'\], "
                                        r"none of them data\.split = 'validation'.*list of rows"):
        fetched(repo_section("data", source=str(path), split="validation"))
    path.write_text(json.dumps(ROWS[0], indent=2))  # one row, pretty-printed: not a list of rows
    with pytest.raises(DataError, match=r"top level is a JSON object with keys \['prompt', 'chosen', 'rejected'\]"):
        fetched(repo_section("data", source=str(path)))


def test_renamed_duplicate_ids_stay_unique_and_are_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    given = ["a", "b", "a", "a#2", "a", "c", "c#2", "c"]
    path.write_bytes(jsonl([{**ROWS[i % 6], "id": x} for i, x in enumerate(given)]))
    rows, stats = fetched(repo_section("data", source=str(path)))
    assert [r["id"] for r in rows] == ["a", "b", "a#2", "a#2#2", "a#3", "c", "c#2", "c#3"]
    assert stats["renamed_duplicate_ids"] == 4


@pytest.mark.parametrize("name", ["d.csv", "d.csv.gz"])
def test_crlf_inside_a_quoted_csv_field_comes_through_byte_for_byte(tmp_path, name):
    text = 'prompt,chosen,rejected\r\nq,"line one\r\nline two\rthree\nfour",bad\r\n'
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    rows, _ = fetched(repo_section("data", source=str(path)))
    assert rows[0]["chosen"][0]["content"] == "line one\r\nline two\rthree\nfour"


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv", "d.json"])
def test_utf8_bom_is_accepted_and_the_first_row_kept(tmp_path, name):
    text = {"d.jsonl": jsonl(ROWS[:2]), "d.csv": CSV.encode(), "d.json": json.dumps(ROWS[:2]).encode()}[name]
    path = tmp_path / name
    path.write_bytes(codecs.BOM_UTF8 + text)
    rows, stats = fetched(repo_section("data", source=str(path), on_bad_rows="skip"))
    assert rows[0]["prompt"][0]["content"] == "q0" and stats["skipped_bad_rows"] == 0


def test_null_id_is_no_id(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl([{**ROWS[0], "id": None}, {**ROWS[1], "id": "x"}]))
    assert ids(repo_section("data", source=str(path))) == ["row-1", "x"]
