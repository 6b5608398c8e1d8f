"""The built-in task: its oracle on hand-computed cases, and its preference data."""
import pytest

from rlhf import synthetic
from rlhf.synthetic import oracle_reward


@pytest.mark.parametrize("response, expected", [
    # sentiment = (pos - neg) / (pos + neg); topic +0.5 for the prompt's subject, -0.5 for another one
    ("the pizza was great.", 1.0 + 0.5),
    ("the pizza was great but the price was awful.", 0.0 + 0.5),
    ("it was great and the staff was lovely and the end was dull.", (2 - 1) / 3),
    ("the movie was terrible.", -1.0 - 0.5),
    ("the pizza was great and the movie was great.", 1.0 + 0.5 - 0.5),
    ("", 0.0),
    ("THE PIZZA WAS GREAT!", 1.5),
])
def test_oracle_hand_computed(response, expected):
    assert oracle_reward("Write a review of the pizza.", response) == pytest.approx(expected)


def test_oracle_is_length_neutral():
    """Repeating a response does not raise its reward: no reward for length alone."""
    prompt = "How was the hotel?"
    once = "the hotel was lovely but the price was poor."
    assert oracle_reward(prompt, once + " " + once) == oracle_reward(prompt, once)


def test_prompt_subject():
    assert synthetic.prompt_subject("What did you think of the camera?") == "camera"
    assert synthetic.prompt_subject("Hello there") is None


def test_generate_is_seeded_and_labels_follow_the_oracle():
    a, b = synthetic.generate(200, seed=3), synthetic.generate(200, seed=3)
    assert a == b
    assert a != synthetic.generate(200, seed=4)
    assert len(a) == 200 and len({r["id"] for r in a}) == 200
    for row in a:
        assert oracle_reward(row["prompt"], row["chosen"]) > oracle_reward(row["prompt"], row["rejected"])


def test_label_noise_swaps_about_that_share():
    rows = synthetic.generate(2000, seed=0, label_noise=0.2)
    swapped = sum(oracle_reward(r["prompt"], r["chosen"]) < oracle_reward(r["prompt"], r["rejected"]) for r in rows)
    assert 0.17 < swapped / len(rows) < 0.23


def test_task_leaves_headroom_for_alignment():
    """Chosen answers beat the behaviour policy on average but stay well below the best reward (1.5)."""
    rows = synthetic.generate(1000, seed=0)
    chosen = sum(oracle_reward(r["prompt"], r["chosen"]) for r in rows) / len(rows)
    rejected = sum(oracle_reward(r["prompt"], r["rejected"]) for r in rows) / len(rows)
    assert rejected < 0.0 < chosen < 1.0


def test_every_prompt_asks_about_its_own_subject():
    """The details never name a subject, so `prompt_subject` (the oracle's topic term) finds the subject the prompt
    was made for, in every composition of template, detail and time."""
    details = [""] + [via.format(who) + when for via in synthetic.VIA for who in synthetic.PEOPLE
                      for when in synthetic.WHEN]
    assert not {w for d in details for w in d.split()} & set(synthetic.SUBJECTS)
    prompts = {t.format(f"{s} {d}".strip()): s for s in synthetic.SUBJECTS for t in synthetic.PROMPTS for d in details}
    assert len(prompts) > 17_000
    assert all(synthetic.prompt_subject(p) == s for p, s in prompts.items())
