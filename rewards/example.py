"""An example reward function: `grpo.rewards.functions: {"rewards.example:polite": 0.5}` adds it to GRPO's reward."""

POLITE_WORDS = ("please", "thank")


def polite(completions, **kwargs):
    """1.0 for an answer that says please or thanks (in any case), else 0.0: a rule-based reward, checked by string
    matching, that needs no model."""
    return [float(any(word in text.lower() for word in POLITE_WORDS)) for text in completions]
