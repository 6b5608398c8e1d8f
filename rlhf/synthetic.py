"""The built-in offline task `builtin:sentiment` and its programmatic oracle reward.

Modelled on the controlled-sentiment experiment of the DPO paper (Rafailov et al., 2023, sec. 6.1): the ground-truth
reward is a known function, preferences are made by scoring two sampled responses with it, and so a run can measure
whether alignment really raised the true reward rather than only the learned reward model's estimate.

A prompt asks for a review of one subject, often with a detail that names no subject ("Write a review of the pizza
your sister told you about last week."). The prompt space (subjects x templates x details, about 17,000 prompts)
is large enough that a validation split of a few hundred prompts none of which train asks is possible, while some
prompts still come with several pairs, as in real preference data. A response is a few short clauses
("the pizza was great and the service was a bit bland."). The oracle reward of a response is

    sentiment + topic,  sentiment = (#positive - #negative) / max(1, #positive + #negative)  in [-1, 1]
                        topic     = +0.5 if it names the prompt's subject, -0.5 if it names another subject, else 0

so it lies in [-1.5, 1.5]. Sentiment is a per-word average, so longer answers earn nothing by length alone, and the
topic term makes the reward depend on the prompt, which a reward model must learn to read.
"""
import random
import re

SUBJECTS = ("pizza", "movie", "hotel", "phone", "book", "concert", "laptop", "garden",
            "museum", "coffee", "train", "camera", "song", "restaurant", "park", "game")
POSITIVE = ("great", "lovely", "excellent", "wonderful", "delightful", "superb",
            "fantastic", "charming", "pleasant", "brilliant", "amazing", "perfect")
NEGATIVE = ("awful", "boring", "terrible", "dull", "horrible", "poor",
            "bland", "noisy", "broken", "dreadful", "ugly", "disappointing")
ASPECTS = ("service", "price", "staff", "design", "sound", "story", "place", "start", "end", "whole thing")
ADVERBS = ("", "", "really ", "quite ", "very ", "a bit ", "truly ", "rather ")
JOINERS = (" and ", " but ", ", ", " and also ")
PROMPTS = ("Write a review of the {}.", "What did you think of the {}?", "Tell me about the {}.",
           "Give me your opinion of the {}.", "How was the {}?")
# Details: who the subject came from and when. No word of theirs is a subject, so the prompt's subject stays the one
# `prompt_subject` finds (tested).
PEOPLE = ("friend", "sister", "brother", "neighbour", "colleague", "teacher", "cousin", "uncle", "aunt", "boss",
          "roommate", "grandmother")
VIA = ("that your {} recommended", "you tried with your {}", "your {} told you about")
WHEN = ("", " last week", " yesterday", " last month", " this morning", " over the holidays")

_WORD = re.compile(r"[a-z]+")
_POSITIVE, _NEGATIVE, _SUBJECTS = set(POSITIVE), set(NEGATIVE), set(SUBJECTS)


def oracle_reward(prompt: str, response: str) -> float:
    """Ground-truth reward of `response` to `prompt` (formula in the module docstring), in [-1.5, 1.5]."""
    words = _WORD.findall(response.lower())
    pos = sum(w in _POSITIVE for w in words)
    neg = sum(w in _NEGATIVE for w in words)
    sentiment = (pos - neg) / max(1, pos + neg)
    subject = prompt_subject(prompt)
    named = {w for w in words if w in _SUBJECTS}
    topic = 0.5 if subject in named else 0.0
    if named - {subject}:
        topic -= 0.5
    return sentiment + topic


def prompt_subject(prompt: str) -> str | None:
    """The subject a prompt asks about (the last known subject word in it), or None."""
    found = [w for w in _WORD.findall(prompt.lower()) if w in _SUBJECTS]
    return found[-1] if found else None


def sample_response(rng: random.Random, subject: str) -> str:
    """One response from the behaviour policy: a random mood decides how positive its adjectives are, and it names
    the right subject, another one, or none, so that both oracle terms vary between the two responses of a pair."""
    mood = rng.random()
    roll = rng.random()
    named = subject if roll < 0.5 else rng.choice(SUBJECTS) if roll < 0.7 else "it"
    clauses = []
    for i in range(rng.randint(1, 3)):
        noun = (named if named == "it" else f"the {named}") if i == 0 else f"the {rng.choice(ASPECTS)}"
        adjective = rng.choice(POSITIVE if rng.random() < mood else NEGATIVE)
        clauses.append(f"{noun} was {rng.choice(ADVERBS)}{adjective}")
    text = clauses[0]
    for clause in clauses[1:]:
        text += rng.choice(JOINERS) + clause
    return text + "."


def sample_prompt(rng: random.Random, subject: str) -> str:
    """A prompt about `subject`: a template, with a detail nine times in ten. The other tenth falls on the 80 bare
    prompts, which therefore come with several pairs each, as prompts of real preference data do."""
    detail = rng.choice(VIA).format(rng.choice(PEOPLE)) + rng.choice(WHEN) if rng.random() < 0.9 else ""
    return rng.choice(PROMPTS).format(f"{subject} {detail}".strip())


def generate(num_pairs: int, seed: int, label_noise: float = 0.0) -> list[dict]:
    """`num_pairs` preference rows {id, prompt, chosen, rejected} (strings), reproducible from `seed`.

    Chosen is the response with the higher oracle reward; pairs with equal rewards are resampled (a tie carries no
    preference). With probability `label_noise` the labels are swapped, to simulate noisy annotators.
    """
    rng = random.Random(seed)
    rows = []
    while len(rows) < num_pairs:
        subject = rng.choice(SUBJECTS)
        prompt = sample_prompt(rng, subject)
        a, b = sample_response(rng, subject), sample_response(rng, subject)
        ra, rb = oracle_reward(prompt, a), oracle_reward(prompt, b)
        if ra == rb:
            continue
        chosen, rejected = (a, b) if ra > rb else (b, a)
        if rng.random() < label_noise:
            chosen, rejected = rejected, chosen
        rows.append({"id": f"sentiment-{len(rows)}", "prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


# builtin:<task> -> (generator, oracle). Later stages look the oracle up here to score generations.
TASKS = {"sentiment": (generate, oracle_reward)}
