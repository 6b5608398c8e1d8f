"""prepare: every filter counted by reason; a seeded, deterministic split sorted as specified."""
import pytest

from rlhf import prepare
from rlhf.config import Prepare
from rlhf.io import UserError
from conftest import messages


def test_filters_count_every_drop_by_reason():
    rows = [
        messages("q1", "good", "bad", "keep"),
        messages("q1", "good", "bad", "dup"),
        messages("q2", "   ", "bad", "empty"),
        messages("q3", "same", "same", "identical"),
        messages("x" * 30, "a", "b", "long-prompt"),
        messages("q4", "a" * 30, "b", "long-response"),
        messages(" ", "a", "b", "no-prompt"),
        messages("q5", "fine", "also fine", "keep2"),
    ]
    kept, dropped = prepare.filter_rows(rows, Prepare(max_prompt_chars=20, max_response_chars=20))
    assert [r["id"] for r in kept] == ["keep", "keep2"]
    assert dropped == {"dropped_duplicate": 1, "dropped_empty_prompt": 1, "dropped_empty_response": 1,
                       "dropped_identical_responses": 1, "dropped_prompt_too_long": 1,
                       "dropped_response_too_long": 1}
    assert len(kept) + sum(dropped.values()) == len(rows)


def test_duplicates_kept_when_asked():
    rows = [messages("q", "a", "b", "1"), messages("q", "a", "b", "2")]
    kept, dropped = prepare.filter_rows(rows, Prepare(drop_duplicates=False))
    assert len(kept) == 2 and not any(dropped.values())


def rows_of_lengths(n):
    return [messages("p" * (i % 7 + 1), "c" * (i % 5 + 1), "r", f"id{i:03d}") for i in range(n)]


def test_split_is_deterministic_and_sized():
    rows = rows_of_lengths(100)
    train, val = prepare.split(rows, 0.2, seed=1)
    assert (train, val) == prepare.split(rows, 0.2, seed=1)
    assert len(val) == 20 and len(train) == 80
    assert {r["id"] for r in train} | {r["id"] for r in val} == {r["id"] for r in rows}
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    other_train, _ = prepare.split(rows, 0.2, seed=2)
    assert [r["id"] for r in other_train] != [r["id"] for r in train]
    assert len(prepare.split(rows, 7, seed=1)[1]) == 7


def test_validation_sorted_longest_first_train_not_sorted():
    train, val = prepare.split(rows_of_lengths(200), 0.25, seed=0)
    lengths = [prepare.length(r) for r in val]
    assert lengths == sorted(lengths, reverse=True)
    train_lengths = [prepare.length(r) for r in train]
    assert train_lengths != sorted(train_lengths) and train_lengths != sorted(train_lengths, reverse=True)
    ids = [r["id"] for r in train]
    assert ids != sorted(ids)  # shuffled, not in source order


def test_split_too_small_is_a_clear_error():
    with pytest.raises(UserError, match="validation_size = 5 gives 5 validation rows out of 3"):
        prepare.split(rows_of_lengths(3), 5, seed=0)


def test_accounting_adds_up_or_raises():
    fetch_stats = {"rows_read": 10, "sampled_out": 2, "skipped_bad_rows": 1, "dropped_tie": 1, "rows_fetched": 6,
                   "source": "x"}
    dropped = {"dropped_duplicate": 1}
    metrics = prepare.account(fetch_stats, 6, dropped, train=4, validation=1)
    assert metrics["train_rows"] == 4 and "source" not in metrics
    with pytest.raises(RuntimeError, match="does not add up"):
        prepare.account(fetch_stats, 6, dropped, train=3, validation=1)
