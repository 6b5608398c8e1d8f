"""tokenize: template, prompt/completion split, truncation directions, counted drops, row manifest."""
from collections import Counter

import pytest

from rlhf import base, synthetic, tokenize
from rlhf.config import Tokenize
from rlhf.io import UserError
from conftest import messages


@pytest.fixture(scope="module")
def tokenizer():
    texts = [t for r in synthetic.generate(300, seed=0) for t in (r["prompt"], r["chosen"], r["rejected"])]
    return base.build_tokenizer(texts, vocab_size=400)


def test_encode_splits_prompt_and_completion_exactly(tokenizer):
    row = messages("How was the pizza?", "the pizza was great.", "it was awful.")
    ex = tokenize.encode(row, tokenizer, "keep")
    full = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True, return_dict=True)["input_ids"]
    assert ex["prompt_ids"] + ex["chosen_ids"] == full
    assert tokenizer.decode(ex["prompt_ids"]) == "<|im_start|>user\nHow was the pizza?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(ex["chosen_ids"]) == "the pizza was great.<|im_end|>\n"
    assert tokenizer.decode(ex["rejected_ids"]) == "it was awful.<|im_end|>\n"
    assert tokenizer.eos_token_id in ex["chosen_ids"]


def test_truncation_keeps_prompt_end_and_completion_start():
    ex = {"id": "x", "prompt_ids": list(range(10)), "chosen_ids": [20, 21, 22, 23], "rejected_ids": [30, 31]}
    counts = Counter()
    out = tokenize.fit(ex, Tokenize(max_prompt_length=3, max_completion_length=3), counts)
    assert out["prompt_ids"] == [7, 8, 9]
    assert out["chosen_ids"] == [20, 21, 22]
    assert out["rejected_ids"] == [30, 31]
    assert counts == {"truncated_prompt": 1, "truncated_chosen": 1, "truncated_rejected": 0}  # `fit` alone


def test_drop_mode_counts_the_reason():
    ex = {"id": "x", "prompt_ids": [1, 2], "chosen_ids": [3] * 9, "rejected_ids": [4]}
    counts = Counter()
    assert tokenize.fit(ex, Tokenize(max_prompt_length=5, max_completion_length=4, overlong="drop"), counts) is None
    assert counts == {"dropped_overlong_chosen": 1}
    assert tokenize.fit(ex, Tokenize(max_prompt_length=5, max_completion_length=9, overlong="drop"), counts) is ex


def test_tokenize_split_accounts_for_every_row(tokenizer):
    rows = [messages("How was the pizza?", "the pizza was great " * k, "bad.", f"r{k}") for k in range(1, 6)]
    out, counts = tokenize.tokenize_split(rows, tokenizer, Tokenize(32, 12, "drop"))
    assert len(out) + sum(v for k, v in counts.items() if k.startswith("dropped")) == len(rows)
    assert counts["dropped_overlong_chosen"] >= 1
    assert all(len(e["chosen_ids"]) <= 12 and len(e["prompt_ids"]) <= 32 for e in out)


def test_check_rows_catches_a_lost_row():
    from datasets import Dataset

    ids = ["a", "b", "c"]
    manifest = {"train": {"rows": 3, "ids_sha256": tokenize.ids_hash(ids)}}
    tokenize.check_rows(Dataset.from_dict({"id": ids}), manifest, "train")
    with pytest.raises(UserError, match="has 2 rows, but the tokenize stage wrote 3"):
        tokenize.check_rows(Dataset.from_dict({"id": ["a", "c"]}), manifest, "train")
    with pytest.raises(UserError, match="ids differ"):
        tokenize.check_rows(Dataset.from_dict({"id": ["a", "c", "b"]}), manifest, "train")


def test_trainer_columns_are_concatenations():
    ex = {"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5], "rejected_ids": [6]}
    assert tokenize.sft_columns(ex) == {"input_ids": [1, 2, 3, 4, 5], "completion_mask": [0, 0, 1, 1, 1]}
    assert tokenize.reward_columns(ex) == {"chosen_ids": [1, 2, 3, 4, 5], "rejected_ids": [1, 2, 6]}
