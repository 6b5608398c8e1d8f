"""rlhf/formats.py: every input format to the one canonical row, and every malformed row to a RowError."""
import gzip
import json
from pathlib import Path

import pytest

from rlhf.formats import FORMATS, RowError, detect_format, normalize_row

HH_FILE = Path(__file__).parents[2].parent / "shared/data/hh-rlhf-harmless-base-test.jsonl.gz"


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


CANONICAL = {"prompt": [user("Hi")], "chosen": [bot("Hello!")], "rejected": [bot("Go away.")]}

# One row of each shape, each meaning the CANONICAL pair above.
ROWS = {
    "explicit": {"id": 7, "prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
    "conversational": {"chosen": [user("Hi"), bot("Hello!")], "rejected": [user("Hi"), bot("Go away.")]},
    "hh": {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."},
    "pairwise": {"prompt": "Hi", "response_a": "Go away.", "response_b": "Hello!", "winner": "model_b"},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}],
                 "chosen": {"from": "gpt", "value": "Hello!"}, "rejected": {"from": "gpt", "value": "Go away."}},
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_normalizes_to_the_canonical_row(fmt):
    assert detect_format(ROWS[fmt]) == fmt
    assert normalize_row(ROWS[fmt], fmt) == CANONICAL


def test_explicit_with_message_lists_keeps_them_as_given():
    row = {"prompt": [{"role": "system", "content": "Be kind."}, user("Hi")],
           "chosen": [{"role": "assistant", "content": "Hello!", "name": None}],  # extra keys (parquet) are ignored
           "rejected": [bot("Go"), bot("away.")]}
    assert normalize_row(row, "explicit") == {
        "prompt": [{"role": "system", "content": "Be kind."}, user("Hi")],
        "chosen": [bot("Hello!")], "rejected": [bot("Go"), bot("away.")]}


def test_conversational_multi_turn_prompt_is_the_shared_history():
    history = [{"role": "system", "content": "Be brief."}, user("Hi"), bot("Hello."), user("Sky colour?")]
    row = {"chosen": history + [bot("Blue.")], "rejected": history + [bot("Green.")]}
    assert normalize_row(row, "conversational") == {"prompt": history, "chosen": [bot("Blue.")],
                                                    "rejected": [bot("Green.")]}


def test_conversational_identical_pair_splits_like_trl():
    """trl.extract_prompt gives identical conversations the prompt 'all but the last message'; so do we."""
    row = {"chosen": [user("Hi"), bot("Yo")], "rejected": [user("Hi"), bot("Yo")]}
    assert normalize_row(row, "conversational") == {"prompt": [user("Hi")], "chosen": [bot("Yo")],
                                                    "rejected": [bot("Yo")]}


def test_hh_multi_turn_strips_turns_and_keeps_inline_human_text():
    prompt = "\n\nHuman:  Q1 \n\nAssistant: A1 says Human: hi\n\nHuman: Q2"
    row = {"chosen": prompt + "\n\nAssistant: good ", "rejected": prompt + "\n\nAssistant: bad"}
    assert normalize_row(row, "hh") == {"prompt": [user("Q1"), bot("A1 says Human: hi"), user("Q2")],
                                        "chosen": [bot("good")], "rejected": [bot("bad")]}


def test_hh_empty_last_reply_is_kept_for_the_filter_stage():
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: ", "rejected": "\n\nHuman: Hi\n\nAssistant: Hello"}
    assert normalize_row(row, "hh")["chosen"] == [bot("")]


@pytest.mark.parametrize("winner, chosen, rejected", [
    ("a", "A", "B"), ("Model_A", "A", "B"), ("b", "B", "A"), (" model_b ", "B", "A")])
def test_pairwise_winner_labels(winner, chosen, rejected):
    row = {"prompt": [user("Hi")], "response_a": "A", "response_b": "B", "winner": winner}
    assert normalize_row(row, "pairwise") == {"prompt": [user("Hi")], "chosen": [bot(chosen)],
                                              "rejected": [bot(rejected)]}


def test_pairwise_chatbot_arena_conversations():
    row = {"model_a": "m1", "model_b": "m2", "winner": "model_a",
           "conversation_a": [user("Hi"), bot("Hello!")], "conversation_b": [user("Hi"), bot("Go away.")]}
    assert detect_format(row) == "pairwise"
    assert normalize_row(row, "pairwise") == CANONICAL


@pytest.mark.parametrize("winner", ["tie", "TIE", "tie (bothbad)"])
def test_pairwise_ties_return_none(winner):
    assert normalize_row({**ROWS["pairwise"], "winner": winner}, "pairwise") is None


def test_sharegpt_system_turns_and_plain_string_replies():
    row = {"system": "Be kind.", "chosen": "Hello!", "rejected": "Go away.",
           "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yes?"},
                             {"from": "user", "value": "Hi again"}]}
    assert normalize_row(row, "sharegpt") == {
        "prompt": [{"role": "system", "content": "Be kind."}, user("Hi"), bot("Yes?"), user("Hi again")],
        "chosen": [bot("Hello!")], "rejected": [bot("Go away.")]}


@pytest.mark.parametrize("row, fmt", [
    ({"question": "q", "response_j": "a", "response_k": "b"}, None),
    ({"chosen": "plain text", "rejected": "plain text"}, None),  # no prompt and not a transcript
    ({"prompt": "q", "response": "a", "winner": "a"}, None),
    ({"chosen": "Human: Hi\n\nAssistant: Yo", "rejected": "x"}, "hh"),  # transcripts without the leading blank line
    ({"prompt": "q", "chosen": "a", "rejected": "b", "winner": "a"}, "explicit"),
])
def test_detect_format(row, fmt):
    if fmt:
        assert detect_format(row) == fmt
        return
    with pytest.raises(ValueError) as err:
        detect_format(row)
    message = str(err.value)
    assert all(repr(col) in message for col in row)
    assert "data.columns" in message and "response_j" in message
    assert all(name in message for name in FORMATS)


@pytest.mark.parametrize("fmt, row, field, phrase", [
    ("explicit", {"prompt": "q", "chosen": "a"}, "rejected", "column missing"),
    ("explicit", {"prompt": "q", "chosen": 3, "rejected": "b"}, "chosen", "got int 3"),
    ("explicit", {"prompt": "q", "chosen": None, "rejected": "b"}, "chosen", "got NoneType"),
    ("explicit", {"prompt": None, "chosen": "a", "rejected": "b"}, "prompt", "expected a string or a list"),
    ("explicit", {"prompt": "q", "chosen": [user("a")], "rejected": "b"}, "chosen", "only assistant messages"),
    ("explicit", {"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}, "prompt",
     "unknown role 'robot'"),
    ("explicit", {"prompt": [{"content": "q"}], "chosen": "a", "rejected": "b"}, "prompt", "'role' and 'content'"),
    ("explicit", {"prompt": [{"role": "user", "content": 5}], "chosen": "a", "rejected": "b"}, "prompt",
     "content must be a string"),
    ("explicit", {"prompt": [], "chosen": "a", "rejected": "b"}, "prompt", "non-empty list"),
    ("conversational", {"chosen": [user("Hi"), bot("a")], "rejected": [user("Yo"), bot("b")]}, "chosen/rejected",
     "no shared prefix"),
    ("conversational", {"chosen": [user("Hi"), bot("a"), user("Q2"), bot("c")],
                        "rejected": [user("Hi"), bot("b"), user("Q2"), bot("d")]}, "chosen/rejected",
     "differ after turn 1"),
    ("conversational", {"chosen": [user("Hi"), bot("a"), user("more")], "rejected": [user("Hi"), bot("b")]},
     "chosen", "ends with a user turn"),
    ("conversational", {"chosen": [bot("a")], "rejected": [bot("b")]}, "chosen", "found no turn"),
    ("conversational", {"chosen": [user("Hi"), bot("x"), bot("a")], "rejected": [user("Hi"), bot("x"), bot("b")]},
     "chosen", "found role 'assistant'"),
    ("hh", {"chosen": "\n\nHuman: Hi", "rejected": "\n\nHuman: Hi\n\nAssistant: b"}, "chosen",
     "end with the assistant reply"),
    ("hh", {"chosen": "no turns at all", "rejected": "\n\nHuman: Hi\n\nAssistant: b"}, "chosen",
     "text before its first"),
    ("hh", {"chosen": ["\n\nHuman: Hi"], "rejected": "\n\nHuman: Hi\n\nAssistant: b"}, "chosen", "transcript string"),
    ("hh", {"chosen": "\n\nHuman: Hi\n\nAssistant: x\n\nAssistant: a", "rejected": "\n\nHuman: Hi\n\nAssistant: b"},
     "chosen/rejected", "differ after turn 1: chosen has turn 2 (assistant: 'x'), rejected has no more turns"),
    ("pairwise", {**ROWS["pairwise"], "winner": "c"}, "winner", "model_a"),
    ("pairwise", {**ROWS["pairwise"], "winner": None}, "winner", "unknown winner label None"),
    ("pairwise", {**ROWS["pairwise"], "winner": ["a"]}, "winner", "unknown winner label ['a']"),
    ("pairwise", {**ROWS["pairwise"], "winner": "tie", "response_b": None}, "response_b", "got NoneType"),
    ("pairwise", {"winner": "a", "conversation_a": [user("Hi"), bot("a")], "conversation_b": [user("Yo"), bot("b")]},
     "conversation_a/conversation_b", "no shared prefix"),
    ("sharegpt", {**ROWS["sharegpt"], "conversations": [{"from": "alien", "value": "Hi"}]}, "conversations",
     "unknown 'from' 'alien'"),
    ("sharegpt", {**ROWS["sharegpt"], "conversations": "Hi"}, "conversations", "non-empty list"),
    ("sharegpt", {**ROWS["sharegpt"], "conversations": [{"from": ["human"], "value": "Hi"}]}, "conversations",
     "unknown 'from' ['human']"),
    ("sharegpt", {**ROWS["sharegpt"], "rejected": {"from": "human", "value": "x"}}, "rejected", "from 'gpt'"),
    ("sharegpt", {**ROWS["sharegpt"], "chosen": {"from": "gpt", "value": 1}}, "chosen", "must be a string"),
])
def test_malformed_rows_raise_row_error(fmt, row, field, phrase):
    with pytest.raises(RowError) as err:
        normalize_row(row, fmt)
    assert err.value.field == field
    assert phrase in str(err.value)


def test_real_hh_file():
    """Anthropic HH-RLHF harmless-base test: 2312 transcripts with the quirks of real data.

    5 rows have chosen/rejected transcripts whose prompts differ: in one transcript a model reply runs on into an
    extra exchange (an inline "  Human: ..." with no blank line, or two "\\n\\nAssistant:" turns in a row), so that
    transcript has one more exchange than the other. Which turns belong to the prompt cannot be known, so they are
    RowErrors, not guesses.
    """
    if not HH_FILE.exists():
        pytest.skip(f"{HH_FILE} not present")
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 2312
    assert detect_format(rows[0]) == "hh"
    good, errors = {}, {}
    for i, row in enumerate(rows):
        try:
            good[i] = normalize_row(row, "hh")
        except RowError as err:
            errors[i] = err
    assert sorted(errors) == [1254, 1688, 1950, 1952, 2036]
    assert {err.field for err in errors.values()} == {"chosen/rejected"}
    assert all("the prompts (turns before the last assistant reply) differ after turn" in str(err)
               for err in errors.values())
    empty = [i for i, row in good.items() if not row["chosen"][0]["content"] or not row["rejected"][0]["content"]]
    assert len(empty) == 4
    for row in good.values():
        assert row["prompt"][-1]["role"] == "user"
        assert len(row["chosen"]) == len(row["rejected"]) == 1
    multi = good[3]  # 9 prompt turns, curly apostrophes
    assert [m["role"] for m in multi["prompt"]] == ["user", "assistant"] * 4 + ["user"]
    assert multi["prompt"][3]["content"].startswith("If you’re trying to break into a room")
