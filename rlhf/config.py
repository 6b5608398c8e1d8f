"""The one typed, validated view of params.yaml that every stage reads.

Each section is a small dataclass whose field names are the keys in params.yaml (and, where a library has a name for
the knob, the library's name). `load()` checks every key, type and range before any work starts and raises
ConfigError naming the key, the bad value and what is allowed.

No field has a default: params.yaml is the only home of a default (a second one in code drifted from it, and tests
built from it ran settings the pipeline never runs), so a key missing from params.yaml is an error, not a guess.
Tests and the benchmark build their params with `load(path, overrides)`.
"""
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rlhf.io import UserError

METHODS = ("dpo", "orpo", "ppo", "simpo", "kto", "grpo", "rloo", "online_dpo")
# The built-in reward functions of rlhf/rewards.py, by the names params.yaml gives them (`<method>.rewards.functions`).
REWARD_FUNCTIONS = ("oracle", "length_penalty", "ends_with_eot", "repetition_penalty")
# Column names the formats in rlhf/formats.py read; data.columns maps them to a dataset's own names.
COLUMN_ROLES = ("id", "prompt", "chosen", "rejected", "response_a", "response_b", "winner",
                "conversations", "conversation_a", "conversation_b")


class ConfigError(UserError, ValueError):
    """A bad params.yaml: the message names the key, the value and what is allowed."""


def _range(low=None, high=None, low_open=False, high_open=False):
    """Field metadata: the allowed numeric range, checked by load()."""
    return {"range": (low, high, low_open, high_open)}


@dataclass
class Builtin:
    num_pairs: int = field(metadata=_range(10))
    label_noise: float = field(metadata=_range(0.0, 0.5))


@dataclass
class Data:
    source: str
    name: str | None
    split: str
    revision: str | None
    columns: dict[str, str]
    sample_ratio: float = field(metadata=_range(0.0, 1.0, low_open=True))
    max_rows: int | None = field(metadata=_range(1))
    on_bad_rows: Literal["error", "skip"]
    builtin: Builtin

    def __post_init__(self):
        unknown = sorted(set(self.columns) - set(COLUMN_ROLES))
        if unknown:
            raise ConfigError(
                f"params.yaml: data.columns has unknown key(s) {unknown}; its keys are the names this pipeline expects "
                f"({', '.join(COLUMN_ROLES)}) and its values your dataset's column names, "
                "e.g. {prompt: question, chosen: response_j, rejected: response_k}."
            )


@dataclass
class Prepare:
    split_by: Literal["prompt", "subject", "row"]
    validation_size: float | int = field(metadata=_range(0.0, low_open=True))
    max_prompt_chars: int = field(metadata=_range(1))
    max_response_chars: int = field(metadata=_range(1))
    drop_duplicates: bool

    def __post_init__(self):
        if isinstance(self.validation_size, float) and self.validation_size >= 1:
            raise ConfigError(
                f"params.yaml: prepare.validation_size = {self.validation_size} is a fraction and must be below 1; "
                "write a whole number (e.g. 200) for a row count."
            )


@dataclass
class TinyModel:
    # LlamaConfig field names, passed straight through.
    vocab_size: int = field(metadata=_range(64))
    hidden_size: int = field(metadata=_range(8))
    intermediate_size: int = field(metadata=_range(8))
    num_hidden_layers: int = field(metadata=_range(1))
    num_attention_heads: int = field(metadata=_range(1))
    max_position_embeddings: int = field(metadata=_range(16))


@dataclass
class Pretrain:
    max_steps: int = field(metadata=_range(0))
    learning_rate: float = field(metadata=_range(0.0, low_open=True))
    per_device_train_batch_size: int = field(metadata=_range(1))


@dataclass
class Model:
    name: str
    revision: str | None
    quantization: Literal["none", "4bit", "8bit"]
    dtype: Literal["auto", "float32", "bfloat16", "float16"]
    tiny: TinyModel
    pretrain: Pretrain


@dataclass
class Tokenize:
    max_prompt_length: int = field(metadata=_range(1))
    max_completion_length: int = field(metadata=_range(1))
    overlong: Literal["truncate", "drop"]
    system_message: Literal["keep", "fold_into_user", "drop"]
    control_tokens: Literal["refuse", "escape", "keep"]


@dataclass
class Processing:
    # Not a stage param: every setting gives the same outputs (tested), so changing it reruns nothing.
    num_proc: int | Literal["auto"] = field(metadata=_range(1))
    batch_size: int = field(metadata=_range(1))


@dataclass
class Lora:
    # peft.LoraConfig field names, passed straight through; null takes the value from compute.preset.
    r: int | None = field(metadata=_range(1))
    lora_alpha: int | None = field(metadata=_range(1))
    lora_dropout: float = field(metadata=_range(0.0, 1.0, high_open=True))
    target_modules: str | list[str]
    # "auto" (ours): [lm_head] for builtin:tiny, null for any other model (see train.resolve_modules_to_save)
    modules_to_save: Literal["auto"] | list[str] | None


@dataclass
class Compute:
    preset: Literal["auto", "low_memory", "standard", "cpu"]
    num_processes: int = field(metadata=_range(1))
    accelerate_config: str | None
    activation_checkpointing: bool  # TrainingArguments' name; honoured by every training stage

    def __post_init__(self):
        if self.accelerate_config is not None and not Path(self.accelerate_config).is_file():
            raise ConfigError(
                f"params.yaml: compute.accelerate_config = {self.accelerate_config!r} is not a file. Give the path of "
                "an accelerate config (e.g. configs/accelerate/ddp.yaml, or one written by `accelerate config`), "
                "relative to the project folder, or null to train in one process."
            )


@dataclass
class Training:
    # transformers/TRL TrainingArguments field names, passed straight through; null takes the value from
    # compute.preset.
    learning_rate: float = field(metadata=_range(0.0, low_open=True))
    num_train_epochs: float = field(metadata=_range(0.0, low_open=True))
    max_steps: int = field(metadata=_range(-1))
    per_device_train_batch_size: int | None = field(metadata=_range(1))
    gradient_accumulation_steps: int | None = field(metadata=_range(1))
    max_length: int | None = field(metadata=_range(1))
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"]
    warmup_steps: int | float = field(metadata=_range(0.0))
    weight_decay: float = field(metadata=_range(0.0))
    max_grad_norm: float = field(metadata=_range(0.0))
    logging_steps: int = field(metadata=_range(1))
    eval_steps: int = field(metadata=_range(1))
    save_steps: int = field(metadata=_range(1))


@dataclass
class SFT(Training):
    train_sampling_strategy: Literal["random", "group_by_length"]


@dataclass
class Ensemble:
    # Ours, not RewardConfig's: how many reward models the reward stage trains (rlhf/reward.py). Not named `size`:
    # DVC's run cache drops every key named size (or nfiles) from its key (dict_sha256's exclude in
    # dvc/stage/cache.py), so a change of it would restore the old reward model (measured with dvc 3.67).
    members: int = field(metadata=_range(1))
    bootstrap: bool


@dataclass
class Reward(Training):
    center_rewards_coefficient: float | None = field(metadata=_range(0.0))
    ensemble: Ensemble


@dataclass
class Reference:
    # The reference stage: the SFT model's log-probs of every pair, computed once (rlhf/reference.py).
    batch_size: int = field(metadata=_range(1))


@dataclass
class DPO(Training):
    beta: float = field(metadata=_range(0.0, low_open=True))
    loss_type: str | list[str]


@dataclass
class ORPO(Training):
    beta: float = field(metadata=_range(0.0, low_open=True))
    init: Literal["base", "sft"]  # ours, not ORPOConfig's: the model the adapter starts from


@dataclass
class SimPO(Training):
    beta: float = field(metadata=_range(0.0, low_open=True))
    simpo_gamma: float = field(metadata=_range(0.0))
    cpo_alpha: float = field(metadata=_range(0.0))


@dataclass
class KTO(Training):
    beta: float = field(metadata=_range(0.0, low_open=True))
    desirable_weight: float = field(metadata=_range(0.0, low_open=True))
    undesirable_weight: float = field(metadata=_range(0.0, low_open=True))


@dataclass
class Rewards:
    # How an RL method (grpo, rloo, ppo, online_dpo) turns an answer into its reward: the reward model's normalized
    # score (its ensemble combined by `aggregate`) times `reward_model`, plus each named function times its weight
    # (rlhf/rewards.py).
    reward_model: float = field(metadata=_range(0.0))
    aggregate: Literal["mean", "mean_minus_std", "min"]
    uncertainty_coef: float = field(metadata=_range(0.0))
    functions: dict[str, float]  # a built-in's name (REWARD_FUNCTIONS) or "rewards.<module>:<function>", to a weight


def check_rewards(rewards: Rewards, section: str) -> None:
    """Raise a ConfigError naming `<section>.rewards` if it rewards nothing or names a function that cannot exist
    (importing a user's function waits for the stage: rlhf/rewards.py)."""
    if rewards.reward_model == 0 and not any(rewards.functions.values()):
        raise ConfigError(f"params.yaml: {section}.rewards gives no reward: reward_model is 0 and no function has a "
                          f"non-zero weight. Set {section}.rewards.reward_model above 0 (the trained reward model) or "
                          f"add a function to {section}.rewards.functions, e.g. {{oracle: 1.0}}.")
    for name in rewards.functions:
        if name not in REWARD_FUNCTIONS and ":" not in name:
            close = difflib.get_close_matches(name, REWARD_FUNCTIONS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"params.yaml: {section}.rewards.functions names {name!r}, which is neither a built-in "
                              f"reward function ({', '.join(REWARD_FUNCTIONS)}) nor a function of your own written "
                              f"as \"rewards.<module>:<function>\" (in the project's rewards/ folder).{hint}")


@dataclass
class OnlineDPO(Training):
    # trl.DPOConfig field names for each round's training (max_steps and num_train_epochs count per round), plus ours:
    # the rounds of sampling from the policy and judging with the reward model (rlhf/methods/online_dpo.py).
    beta: float = field(metadata=_range(0.0, low_open=True))
    loss_type: str | list[str]
    rounds: int = field(metadata=_range(1))
    samples_per_prompt: int = field(metadata=_range(2))
    prompts_per_round: int | None = field(metadata=_range(1))
    max_new_tokens: int = field(metadata=_range(1))
    temperature: float = field(metadata=_range(0.0, low_open=True))
    min_margin: float = field(metadata=_range(0.0))
    rewards: Rewards

    def __post_init__(self):
        check_rewards(self.rewards, "online_dpo")


@dataclass
class GRPO:
    # trl.GRPOConfig field names, except rewards (ours: the functions and their weights, TRL's reward_weights).
    learning_rate: float = field(metadata=_range(0.0, low_open=True))
    max_steps: int = field(metadata=_range(1))
    per_device_train_batch_size: int = field(metadata=_range(1))
    gradient_accumulation_steps: int = field(metadata=_range(1))
    num_generations: int = field(metadata=_range(2))
    max_completion_length: int = field(metadata=_range(1))
    temperature: float = field(metadata=_range(0.0, low_open=True))
    beta: float = field(metadata=_range(0.0))
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"]
    warmup_steps: int | float = field(metadata=_range(0.0))
    logging_steps: int = field(metadata=_range(1))
    save_steps: int = field(metadata=_range(1))
    rewards: Rewards

    def __post_init__(self):
        check_rewards(self.rewards, "grpo")


@dataclass
class RLOO(GRPO):
    # trl.RLOOConfig field names (the same as GRPO's here), except rewards (ours).

    def __post_init__(self):
        check_rewards(self.rewards, "rloo")


@dataclass
class PPO:
    # Our own PPO (TRL 1.x has none); names follow TRL's PPOConfig (0.11) where it had one.
    learning_rate: float = field(metadata=_range(0.0, low_open=True))
    num_iterations: int = field(metadata=_range(1))
    rollout_batch_size: int = field(metadata=_range(1))
    mini_batch_size: int = field(metadata=_range(1))
    ppo_epochs: int = field(metadata=_range(1))
    max_new_tokens: int = field(metadata=_range(1))
    temperature: float = field(metadata=_range(0.0, low_open=True))
    kl_coef: float = field(metadata=_range(0.0))
    adap_kl_ctrl: bool
    target: float = field(metadata=_range(0.0, low_open=True))
    horizon: int = field(metadata=_range(1))
    missing_eos_penalty: float | None = field(metadata=_range(0.0))
    reward_normalization: Literal["dataset", "sft_samples"]
    critic: Literal["shared", "separate"]
    clip_range: float = field(metadata=_range(0.0, low_open=True))
    clip_range_value: float = field(metadata=_range(0.0, low_open=True))
    vf_coef: float = field(metadata=_range(0.0))
    gamma: float = field(metadata=_range(0.0, 1.0))
    lam: float = field(metadata=_range(0.0, 1.0))
    whiten_advantages: bool
    max_grad_norm: float = field(metadata=_range(0.0, low_open=True))
    logging_steps: int = field(metadata=_range(1))
    save_steps: int = field(metadata=_range(1))
    rewards: Rewards

    def __post_init__(self):
        check_rewards(self.rewards, "ppo")


@dataclass
class Align:
    # The align stage's own before/after check on validation prompts (the evaluate stage measures in full).
    seed: int  # the align stage's seed in place of the top-level one, so a seed sweep reuses SFT and the reward model
    oracle_eval_prompts: int = field(metadata=_range(1))
    max_new_tokens: int = field(metadata=_range(1))
    temperature: float = field(metadata=_range(0.0, low_open=True))


@dataclass
class Gate:
    # Thresholds the policy must meet against SFT before export ships it; null turns a check off.
    min_rm_win_rate: float | None = field(metadata=_range(0.0, 1.0))
    min_oracle_win_rate: float | None = field(metadata=_range(0.0, 1.0))
    max_kl: float | None = field(metadata=_range(0.0))
    max_length_change: float | None = field(metadata=_range(0.0))
    max_perplexity_rise: float | None = field(metadata=_range(0.0))
    max_repetition: float | None = field(metadata=_range(0.0, 1.0))
    max_empty_share: float | None = field(metadata=_range(0.0, 1.0))
    max_cutoff_share: float | None = field(metadata=_range(0.0, 1.0))
    min_distinct2_ratio: float | None = field(metadata=_range(0.0))
    max_uncertainty_rise: float | None = field(metadata=_range(0.0))


@dataclass
class Eval:
    num_prompts: int | None = field(metadata=_range(1))
    max_new_tokens: int = field(metadata=_range(1))
    temperature: float = field(metadata=_range(0.0, low_open=True))
    top_p: float = field(metadata=_range(0.0, 1.0, low_open=True))
    batch_size: int = field(metadata=_range(1))
    num_samples: int = field(metadata=_range(0))
    gate: Gate


@dataclass
class Export:
    enabled: bool
    dtype: Literal["auto", "float32", "bfloat16", "float16"]
    on_failed_gate: Literal["card", "fail", "export"]


@dataclass
class Tracking:
    wandb: bool
    wandb_project: str


@dataclass
class Params:
    seed: int
    method: Literal[METHODS]
    data: Data
    prepare: Prepare
    model: Model
    tokenize: Tokenize
    processing: Processing
    lora: Lora
    compute: Compute
    sft: SFT
    reward: Reward
    reference: Reference
    align: Align
    dpo: DPO
    orpo: ORPO
    ppo: PPO
    simpo: SimPO
    kto: KTO
    grpo: GRPO
    rloo: RLOO
    online_dpo: OnlineDPO
    eval: Eval
    export: Export
    tracking: Tracking


def _override(raw: dict, overrides: dict) -> dict:
    """`raw` (a parsed params.yaml) with `overrides` (dotted keys, e.g. "sft.max_steps") set in place."""
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return raw


def write_with_overrides(src: str | Path, dst: str | Path, overrides: dict) -> Path:
    """`src` (a params.yaml) with `overrides` (dotted keys, e.g. "sft.max_steps") applied, written to `dst`; for
    tests and the benchmark, which run the stages on other settings."""
    raw = _override(yaml.safe_load(Path(src).read_text()), overrides)
    Path(dst).write_text(yaml.safe_dump(raw, sort_keys=False))
    return Path(dst)


def load(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Parse and validate params.yaml, with `overrides` (dotted keys, for tests and the benchmark) applied; raise
    ConfigError before any work starts."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found. Run the stages from the repository root, where params.yaml lives.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err}). Fix the syntax and run again.") from None
    return _build(Params, _override(raw, overrides or {}), "", path)


def _build(cls, raw: Any, prefix: str, path: Path):
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {where} must be a mapping of keys to values, got {raw!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(
                f"{path}: unknown key '{prefix}{key}'.{hint} Allowed keys in {where}: {', '.join(fields)}. "
                "Fix the spelling in params.yaml (with `dvc exp run -S`, only keys already in params.yaml can be set)."
            )
    missing = [prefix + name for name in fields if name not in raw]
    if missing:
        raise ConfigError(
            f"{path}: missing key(s) {', '.join(missing)}. The code has no defaults: every setting is written in "
            "params.yaml. Copy the missing line(s), with their comments, from the repository's params.yaml."
        )
    values = {}
    for name, f in fields.items():
        key = prefix + name
        values[name] = _convert(hints[name], raw[name], key, path)
        if "range" in f.metadata and isinstance(values[name], (int, float)):  # not None or "auto"
            _check_range(values[name], f.metadata["range"], key, path)
    return cls(**values)


def _convert(hint, value, key: str, path: Path):
    """Check `value` against the type hint and return it (converted where YAML is ambiguous, e.g. '1e-5')."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", path)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in sorted(args, key=lambda a: a is float):  # try int before float so 5 stays an int
            try:
                return _convert(option, value, key, path)
            except ConfigError as err:
                errors.append(err)
        raise _type_error(key, value, " or ".join(_type_name(a) for a in args), path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{path}: {key} = {value!r} is not allowed; choose one of: {', '.join(map(str, args))}."
            )
        return value
    if hint is type(None):
        if value is not None:
            raise _type_error(key, value, "null", path)
        return None
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _type_error(key, value, f"a mapping of strings to {_plural(args[1])}", path)
        return {k: _convert(args[1], v, f"{key}.{k}", path) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, args[0]) for v in value):
            raise _type_error(key, value, f"a list of {_type_name(args[0])}", path)
        return list(value)
    if hint is float:
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _type_error(key, value, "a number", path)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, value, "an integer", path)
    if not isinstance(value, hint):
        raise _type_error(key, value, _type_name(hint), path)
    return value


def _check_range(value, bounds, key: str, path: Path):
    low, high, low_open, high_open = bounds
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else f"{low} {'<' if low_open else '<='} "
        hi = "" if high is None else f" {'<' if high_open else '<='} {high}"
        raise ConfigError(f"{path}: {key} = {value!r} is out of range; allowed: {lo}{key}{hi}.")


def _type_name(hint) -> str:
    names = {str: "a string", bool: "true or false", int: "an integer", float: "a number", type(None): "null"}
    if typing.get_origin(hint) is Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(hint) -> str:
    return {str: "strings", float: "numbers", int: "integers", bool: "true/false values"}.get(hint, _type_name(hint))


def _type_error(key: str, value, expected: str, path: Path) -> ConfigError:
    return ConfigError(f"{path}: {key} = {value!r} has the wrong type; expected {expected}.")


def run(params: "Params", paths) -> None:
    """The check stage: `params` passed load(), which raised a ConfigError naming the key otherwise. The output's text
    is constant, so a new valid `method` reruns this stage (a second) but nothing after it (see dvc.yaml)."""
    Path(paths.checked).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.checked).write_text("params.yaml passed rlhf/config.py's checks\n")
