"""Atomic outputs: a failed stage leaves nothing that looks valid."""
import pytest

from rlhf.io import atomic_dir, read_json, write_json


def test_atomic_dir_publishes_only_on_success(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "1"


def test_atomic_dir_failure_leaves_no_output_and_no_temp(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("crash mid-write")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_previous_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]


def test_write_json_roundtrip_unicode(tmp_path):
    write_json(tmp_path / "m.json", {"a": "ü’", "b": 1})
    assert read_json(tmp_path / "m.json") == {"a": "ü’", "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_only_the_reward_heads_load_report_is_dropped():
    """transformers' load report (styled as in a log) is dropped when `score.weight` is its only finding, kept when
    another key is missing or unexpected."""
    import logging

    from rlhf.io import expected_load_report

    def report(*rows):
        table = "\n".join(f"{key} | \x1b[31m{status}\x1b[0m | " for key, status in rows)
        msg = (f"\x1b[1mLlamaForSequenceClassification LOAD REPORT\x1b[0m from: models/base\nKey | Status | \n{table}"
               "\n\nNotes:\n- MISSING:\tthose params were newly initialized because missing from the checkpoint.")
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0, msg, None, None)

    assert expected_load_report(report(("score.weight", "MISSING")))
    assert not expected_load_report(report(("score.weight", "MISSING"), ("model.norm.weight", "MISSING")))
    assert not expected_load_report(report(("model.layers.0.mlp.up_proj.weight", "MISSING")))
    assert not expected_load_report(report(("score.weight", "UNEXPECTED"), ("lm_head.weight", "UNEXPECTED")))
    assert not expected_load_report(logging.LogRecord("x", logging.WARNING, "", 0, "score.weight | MISSING", None, None))
