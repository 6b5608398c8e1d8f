"""Reward functions (rlhf/rewards.py): each built-in on hand-computed values, a user function from rewards/, the
clear error for each way a user function can be wrong, the config's checks, and PPO's weighted score."""
import math
import sys
import types

import pytest
import torch

from rlhf import config, rewards, scoring
from rlhf.io import UserError
from tests.conftest import repo_section
from tests.unit.test_templates import FAMILIES, family_tokenizer

NONE = {"reward_model": 0.0, "aggregate": "mean", "uncertainty_coef": 1.0}


@pytest.fixture(scope="module")
def tok():
    """Llama 3's first release: turns end <|eot_id|>, EOS is <|end_of_text|>; both end an answer."""
    return family_tokenizer(FAMILIES["llama3"])


def setup(functions: dict, tokenizer=None, source="builtin:sentiment", limit=8, **fields):
    """The checked (function, weight) pairs of grpo.rewards with these functions."""
    section = config.Rewards(**(NONE | fields), functions=functions)
    return rewards.functions(section, "grpo", tokenizer, source, limit)


def call(fn, completion_ids, prompt_ids=None, completions=None):
    prompt_ids = prompt_ids or [[1]] * len(completion_ids)
    completions = completions or [""] * len(completion_ids)
    return fn([""] * len(completion_ids), completions, completion_ids, prompt_ids)


def test_every_builtin_name_has_a_function(tok):
    assert set(rewards.BUILTINS) == set(config.REWARD_FUNCTIONS)
    funcs = setup({name: 1.0 for name in rewards.BUILTINS}, tok)
    assert [fn.__name__ for fn, _ in funcs] == list(rewards.BUILTINS)


def test_length_penalty_hand_computed():
    """Limit 8: 2 tokens -> -2/8, 8 tokens (the limit) -> -1, an empty answer -> 0."""
    [(fn, weight)] = setup({"length_penalty": 0.5})
    assert weight == 0.5 and call(fn, [[4, 5], list(range(8)), []]) == [-0.25, -1.0, 0.0]


def test_repetition_penalty_hand_computed():
    """[1 2 3 4 1 2 3 4] has five 4-grams, four of them distinct: -(1 - 4/5) = -0.2; [1 2 3] has no 4-gram: 0;
    [7 7 7 7 7 7] has three 4-grams, one distinct: -(1 - 1/3)."""
    [(fn, _)] = setup({"repetition_penalty": 1.0})
    assert call(fn, [[1, 2, 3, 4, 1, 2, 3, 4], [1, 2, 3], [7] * 6]) == pytest.approx([-0.2, 0.0, -2 / 3])


def test_ends_with_eot_hand_computed(tok):
    """1 for an answer ending with <|eot_id|> or with EOS (<|end_of_text|>); 0 for one cut off, or empty."""
    eot, eos = tok.convert_tokens_to_ids(["<|eot_id|>", "<|end_of_text|>"])
    [(fn, _)] = setup({"ends_with_eot": 1.0}, tok)
    assert call(fn, [[40, eot], [40, eos], [40, 41], [eot, 40], []]) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_oracle_hand_computed(tok):
    """The built-in task's oracle (tests/unit/test_synthetic.py): 'the pizza was great.' to a pizza prompt is
    sentiment 1 + topic 0.5; 'the movie was terrible.' is -1 - 0.5 (another subject)."""
    [(fn, _)] = setup({"oracle": 1.0}, tok)
    prompt = tok("Write a review of the pizza.", add_special_tokens=False)["input_ids"]
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    answers = [tok(t, add_special_tokens=False)["input_ids"] + [eot]
               for t in ("the pizza was great.", "the movie was terrible.")]
    assert call(fn, answers, [prompt, prompt]) == pytest.approx([1.5, -1.5])


def test_oracle_needs_a_builtin_task(tok):
    with pytest.raises(UserError, match=r"grpo.rewards.functions names oracle, which needs a built-in task"):
        setup({"oracle": 1.0}, tok, source="data/my.jsonl")


def test_a_user_function_from_the_rewards_folder_loads():
    [(fn, weight)] = setup({"rewards.example:polite": 2.0})
    assert weight == 2.0 and fn.__name__ == "rewards_example_polite"  # a metric name for TRL's logs
    assert call(fn, [[1], [2]], completions=["Thank you!", "no."]) == [1.0, 0.0]


def test_a_zero_weight_function_is_left_out():
    assert setup({"length_penalty": 0.0}, reward_model=1.0) == []


@pytest.fixture
def user_module(monkeypatch):
    """rewards.testonly: user functions with each kind of mistake (a module of the rewards package, in memory)."""
    module = types.ModuleType("rewards.testonly")
    module.positional = lambda texts: [0.0] * len(texts)
    module.nan = lambda completions, **kwargs: [math.nan] * len(completions)
    module.short = lambda completions, **kwargs: [1.0]
    module.words = lambda completions, **kwargs: ["good"] * len(completions)
    module.fine = lambda prompts, completions, completion_ids, prompt_ids: [float(len(c)) for c in completion_ids]
    monkeypatch.setitem(sys.modules, "rewards.testonly", module)
    return module


@pytest.mark.parametrize("name, message", [
    ("rlhf.stats:repetition", r"'rlhf.stats:repetition' lives outside the project's rewards/ folder.*DVC would not "
                              r"rerun align.*Move it into rewards/"),
    ("mypackage:score", r"outside the project's rewards/ folder"),
    ("rewards.nosuchmodule:score", r"'rewards.nosuchmodule:score': cannot import module 'rewards.nosuchmodule'"),
    ("rewards.example:rude", r"'rewards.example:rude': module rewards.example has no function 'rude'"),
    ("rewards.example", r"module rewards.example has no function ''"),
    ("rewards.testonly:positional", r"'rewards.testonly:positional': its signature \(texts\) cannot take the "
                                    r"reward-function arguments"),
])
def test_a_bad_user_function_is_refused_before_training(user_module, name, message):
    with pytest.raises(UserError, match=message):
        setup({name: 1.0})


@pytest.mark.parametrize("name, message", [
    ("nan", r"reward function 'rewards.testonly:nan' \(grpo.rewards.functions\) returned a non-finite reward \(nan\) "
            r"for completion 0"),
    ("short", r"'rewards.testonly:short' .* returned 1 rewards for 2 completions"),
    ("words", r"'rewards.testonly:words' .* not a list of numbers"),
])
def test_a_bad_reward_while_training_names_the_function(user_module, name, message):
    [(fn, _)] = setup({f"rewards.testonly:{name}": 1.0})
    with pytest.raises(UserError, match=message):
        call(fn, [[1], [2, 3]], completions=["a", "b"])


def test_a_user_function_gets_the_contract_arguments_only(user_module):
    """TRL passes trainer_state, log_metric ... as well; a function without **kwargs still works."""
    [(fn, _)] = setup({"rewards.testonly:fine": 1.0})
    assert fn([""], ["a"], [[1, 2]], [[9]], trainer_state=None, log_metric=print) == [2.0]


def test_config_refuses_a_section_that_rewards_nothing():
    with pytest.raises(config.ConfigError, match=r"rloo.rewards gives no reward: reward_model is 0"):
        repo_section("rloo", rewards=NONE | {"functions": {"length_penalty": 0.0}})


def test_config_refuses_an_unknown_builtin_and_suggests_one():
    with pytest.raises(config.ConfigError, match=r"ppo.rewards.functions names 'orcale'.*Did you mean 'oracle'\?"):
        repo_section("ppo", rewards=NONE | {"reward_model": 1.0, "functions": {"orcale": 1.0}})


def test_the_default_rewards_are_the_reward_model_alone():
    for method in ("grpo", "rloo", "ppo"):
        section = repo_section(method).rewards
        assert (section.reward_model, section.aggregate, section.functions) == (1.0, "mean", {})


def constant_scorer(members: list[list[float]]):
    """A reward-model scorer whose members' raw scores are `members` (B, k), normalized with mean 0, std 1."""
    raw = torch.tensor(members)
    return lambda prompts, answers: scoring.ensemble_scores(raw, [{"score_mean": 0.0, "score_std": 1.0}] * raw.shape[1])


def test_ppo_score_is_the_weighted_sum(tok):
    """reward_model 0.5, mean_minus_std with coef 2, plus 3 x length_penalty at limit 8. Answer 1: members (1, 3):
    mean 2, std 1: 0.5 * (2 - 2) + 3 * (-2/8) = -0.75. Answer 2: members (4, 4): 0.5 * 4 + 3 * (-4/8) = 0.5."""
    section = config.Rewards(reward_model=0.5, aggregate="mean_minus_std", uncertainty_coef=2.0,
                             functions={"length_penalty": 3.0})
    funcs = rewards.functions(section, "ppo", tok, "builtin:sentiment", 8)
    raw, total = rewards.total_score(constant_scorer([[1.0, 3.0], [4.0, 4.0]]), section, funcs, tok)(
        [[5], [6]], [[40, 41], [40, 41, 42, 43]])
    assert raw.tolist() == [2.0, 4.0] and total.tolist() == pytest.approx([-0.75, 0.5])


def test_ppo_score_with_the_defaults_is_the_normalized_score_exactly(tok):
    """params.yaml's default ppo.rewards keep PPO's numerics: the reward model's normalized score, bit for bit."""
    scorer = constant_scorer([[0.1234567], [-2.5]])
    _, total = rewards.total_score(scorer, repo_section("ppo").rewards, [], tok)([[5], [6]], [[40], [41]])
    assert torch.equal(total, scorer(None, None).normalized)
