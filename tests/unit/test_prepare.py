"""prepare: every filter counted by reason; a seeded, deterministic split sorted as specified; the same output for
any number of workers and any batch size."""
import json

import pytest

from rlhf import prepare, synthetic
from rlhf.io import UserError, read_jsonl
from tests.conftest import messages, repo_section, run_stage, write_params


def run(rows, tmp_path, cfg=None, seed=0, num_proc=1, batch_size=1000):
    """prepare.prepare on `rows` written as a fetch output: (train rows, validation rows, drop counts)."""
    cfg = cfg or repo_section("prepare")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = tmp_path / f"out-{seed}-{num_proc}-{batch_size}"
    out.mkdir(exist_ok=True)
    read, dropped, n_train, n_val, _ = prepare.prepare(tmp_path / "rows.jsonl", out, cfg, seed, num_proc, batch_size)
    train, val = read_jsonl(out / "train.jsonl"), read_jsonl(out / "validation.jsonl")
    assert read == len(rows) and (n_train, n_val) == (len(train), len(val))
    return train, val, dropped


def test_filters_count_every_drop_by_reason(tmp_path):
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
    cfg = repo_section("prepare", validation_size=1, max_prompt_chars=20, max_response_chars=20)
    train, val, dropped = run(rows, tmp_path, cfg)
    kept = train + val
    assert sorted(r["id"] for r in kept) == ["keep", "keep2"]
    assert dropped == {"dropped_duplicate": 1, "dropped_empty_prompt": 1, "dropped_empty_response": 1,
                       "dropped_identical_responses": 1, "dropped_prompt_too_long": 1,
                       "dropped_response_too_long": 1}
    assert len(kept) + sum(dropped.values()) == len(rows)


def test_duplicates_kept_when_asked():
    rows = [messages("q", "a", "b", "1"), messages("q", "a", "b", "2")]
    checked = prepare.checks([json.dumps(r).encode() for r in rows], repo_section("prepare"))
    kept, _, _, dropped = prepare.filter_rows(checked, drop_duplicates=False)
    assert list(kept) == [0, 1] and not any(dropped.values())
    kept, _, _, dropped = prepare.filter_rows(checked, drop_duplicates=True)
    assert list(kept) == [0] and dropped["dropped_duplicate"] == 1


def rows_of_lengths(n):
    return [messages("p" * (i % 7 + 1) + str(i), "c" * (i % 5 + 1), "r", f"id{i:03d}") for i in range(n)]


def test_split_is_deterministic_and_sized(tmp_path):
    rows = rows_of_lengths(100)
    cfg = repo_section("prepare", validation_size=0.2)
    train, val, _ = run(rows, tmp_path, cfg, seed=1)
    assert (train, val) == run(rows, tmp_path, cfg, seed=1)[:2]
    assert len(val) == 20 and len(train) == 80
    assert {r["id"] for r in train} | {r["id"] for r in val} == {r["id"] for r in rows}
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    other_train = run(rows, tmp_path, cfg, seed=2)[0]
    assert [r["id"] for r in other_train] != [r["id"] for r in train]
    assert len(run(rows, tmp_path, repo_section("prepare", validation_size=7), seed=1)[1]) == 7


def test_same_output_for_any_workers_and_batch_size(tmp_path):
    rows = rows_of_lengths(300) + rows_of_lengths(20)  # the second copy: duplicates across batches
    one = run(rows, tmp_path, seed=3)
    assert one[2]["dropped_duplicate"] == 20
    for num_proc, batch_size in ((2, 7), (2, 1000), (1, 1)):
        assert run(rows, tmp_path, seed=3, num_proc=num_proc, batch_size=batch_size) == one
        assert (tmp_path / f"out-3-{num_proc}-{batch_size}/train.jsonl").read_bytes() == \
            (tmp_path / "out-3-1-1000/train.jsonl").read_bytes()


def test_validation_sorted_longest_first_train_not_sorted(tmp_path):
    train, val, _ = run(rows_of_lengths(200), tmp_path, repo_section("prepare", validation_size=0.25))
    lengths = [prepare.length(r) for r in val]
    assert lengths == sorted(lengths, reverse=True)
    train_lengths = [prepare.length(r) for r in train]
    assert train_lengths != sorted(train_lengths) and train_lengths != sorted(train_lengths, reverse=True)
    ids = [r["id"] for r in train]
    assert ids != sorted(ids)  # shuffled, not in source order


def test_split_too_small_is_a_clear_error():
    with pytest.raises(UserError, match="validation_size = 5 gives 5 validation rows out of 3"):
        prepare.split(range(3), 5, seed=0)


def four_pairs_per_prompt(n_prompts):
    """4 pairs for each of `n_prompts` prompts, as in UltraFeedback-style data. One pair of each prompt writes it
    with other case and spacing: the same prompt, which must not cross the split either."""
    return [messages(f"Question {q}: how was it?" if k else f"  question {q}:  HOW was\tit? ", f"good {k}", "bad",
                     f"q{q}-{k}") for q in range(n_prompts) for k in range(4)]


def prompts_of(rows):
    return {prepare.prompt_key(r["prompt"]) for r in rows}


def test_pairs_of_one_prompt_stay_on_one_side(tmp_path):
    """No prompt in both splits; the rows and prompts add up; the counts returned are those of the files; and the
    split is the same for any workers and batch size. `split_by: row` leaks here, which shows the test can fail."""
    rows = four_pairs_per_prompt(50)
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for num_proc, batch_size in ((1, 1000), (2, 7)):
        out = tmp_path / f"out-{num_proc}"
        out.mkdir()
        cfg = repo_section("prepare", split_by="prompt", validation_size=0.1)
        _, _, n_train, n_val, counts = prepare.prepare(tmp_path / "rows.jsonl", out, cfg, 0, num_proc, batch_size)
        train, val = read_jsonl(out / "train.jsonl"), read_jsonl(out / "validation.jsonl")
        assert not prompts_of(train) & prompts_of(val)
        assert counts == {"train_prompts": len(prompts_of(train)), "validation_prompts": len(prompts_of(val)),
                          "validation_prompts_in_train": 0}
        assert len(train) + len(val) == len(rows) and (n_train, n_val) == (len(train), len(val))
        assert counts["train_prompts"] + counts["validation_prompts"] == 50
        assert len(val) == 20 and len(val) % 4 == 0  # 5 whole prompts: 10% of 200 rows
    assert (tmp_path / "out-1/train.jsonl").read_bytes() == (tmp_path / "out-2/train.jsonl").read_bytes()
    assert (tmp_path / "out-1/validation.jsonl").read_bytes() == (tmp_path / "out-2/validation.jsonl").read_bytes()
    train, val, _ = run(rows, tmp_path, repo_section("prepare", split_by="row", validation_size=0.1))
    assert prompts_of(train) & prompts_of(val)


def test_groups_fill_validation_to_at_least_the_size_asked():
    """Whole groups, taken until validation holds the rows asked for: with groups of 4, 6 rows asked give 8; a
    count that only every group reaches is an error naming the groups, not an empty train split."""
    groups = [g for g in range(10) for _ in range(4)]
    train, val = prepare.split(groups, 6, seed=0)
    assert len(val) == 8 and len({groups[i] for i in val}) == 2 and sorted(train + val) == list(range(40))
    with pytest.raises(UserError, match="share only 2 group.*leaving train empty"):
        prepare.split([0] * 4 + [1] * 4, 5, seed=0)


def test_split_by_subject_holds_out_whole_subjects(tmp_path):
    rows = [messages(r["prompt"], r["chosen"], r["rejected"], r["id"]) for r in synthetic.generate(300, seed=0)]
    train, val, _ = run(rows, tmp_path, repo_section("prepare", split_by="subject", validation_size=0.2))
    subject = lambda r: synthetic.prompt_subject(r["prompt"][0]["content"])  # noqa: E731
    assert {subject(r) for r in val} and not {subject(r) for r in train} & {subject(r) for r in val}
    with pytest.raises(UserError, match="row 'q0-0' asks about none of the built-in task's subjects"):
        run(four_pairs_per_prompt(5), tmp_path, repo_section("prepare", split_by="subject", validation_size=0.2))


def test_default_params_hold_out_400_prompts_none_of_them_in_train(tmp_path):
    """fetch and prepare on the repository's params.yaml: the validation split shares no prompt with train (as
    metrics/data.json says) and holds at least 400 distinct prompts, enough for a win rate within +-0.05."""
    write_params(tmp_path / "params.yaml", {})
    run_stage(tmp_path, "fetch")
    run_stage(tmp_path, "prepare", "--data-metrics", "data.json")
    train, val = (read_jsonl(tmp_path / f"data/prepared/{split}.jsonl") for split in ("train", "validation"))
    metrics = json.loads((tmp_path / "data.json").read_text())
    assert not prompts_of(train) & prompts_of(val) and metrics["validation_prompts_in_train"] == 0
    assert metrics["validation_prompts"] == len(prompts_of(val)) >= 400


def test_accounting_adds_up_or_raises():
    fetch_stats = {"rows_read": 10, "sampled_out": 2, "skipped_bad_rows": 1, "dropped_tie": 1, "rows_fetched": 6,
                   "source": "x"}
    dropped = {"dropped_duplicate": 1}
    prompts = prepare.prompt_counts([], [], [])
    metrics = prepare.account(fetch_stats, 6, dropped, train=4, validation=1, prompts=prompts)
    assert metrics["train_rows"] == 4 and "source" not in metrics and metrics["validation_prompts_in_train"] == 0
    with pytest.raises(RuntimeError, match="does not add up"):
        prepare.account(fetch_stats, 6, dropped, train=3, validation=1, prompts=prompts)


def test_every_row_dropped_names_the_counts_and_still_writes_the_metrics(tmp_path, monkeypatch):
    """All rows filtered out: the error says so, with the counts by reason, not a validation_size complaint; and
    metrics/data.json is written, so the user can see where the rows went."""
    import runpy
    import sys

    from tests.conftest import REPO, write_params

    fetched = tmp_path / "fetched"
    fetched.mkdir()
    rows = [messages(f"q{i}", "same", "same", f"r{i}") for i in range(1000)] + [messages("", "a", "b", "e")]
    (fetched / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (fetched / "fetch.json").write_text(json.dumps({"rows_read": 1001, "sampled_out": 0, "skipped_bad_rows": 0,
                                                    "dropped_tie": 0, "rows_fetched": 1001}))
    write_params(tmp_path / "params.yaml", {})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["prepare", "--fetched", "fetched", "--prepared", "prepared", "--data-metrics", "data.json"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "stages" / "prepare.py"), run_name="__main__")
    assert exit_.value.code == 1
    metrics = json.loads((tmp_path / "data.json").read_text())
    assert metrics["dropped_identical_responses"] == 1000 and metrics["train_rows"] == 0
    assert not (tmp_path / "prepared").exists()


def test_every_row_dropped_message():
    dropped = {"dropped_identical_responses": 1000, "dropped_empty_prompt": 1, "dropped_duplicate": 0}
    with pytest.raises(UserError) as err:
        prepare.check_any_left(1001, dropped)
    message = str(err.value)
    assert "all 1,001 rows were dropped" in message and "1,000 identical_responses, 1 empty_prompt" in message
    assert "duplicate" not in message and "validation_size" not in message
