import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
SLOW = Path(__file__).resolve().parent / "slow"
SHARED_DATA = REPO.parent / "shared" / "data"


def messages(prompt: str, chosen: str, rejected: str, row_id: str = "r") -> dict:
    """A canonical row from three strings."""
    return {"id": row_id, "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


TINY = {  # small enough for a few seconds per stage on 2 cores
    "data.builtin.num_pairs": 200, "model.tiny.vocab_size": 300, "model.tiny.hidden_size": 32,
    "model.tiny.intermediate_size": 64, "model.pretrain.max_steps": 30, "model.pretrain.per_device_train_batch_size": 16,
    "sft.max_steps": 4, "sft.logging_steps": 1, "sft.eval_steps": 2, "sft.save_steps": 2,
    "reward.max_steps": 4, "reward.logging_steps": 1, "reward.eval_steps": 2, "reward.save_steps": 2,
    "align.oracle_eval_prompts": 8, "align.max_new_tokens": 8,
    **{f"{m}.{k}": v for m in ("dpo", "orpo", "simpo", "kto")
       for k, v in {"max_steps": 3, "logging_steps": 1, "eval_steps": 2, "save_steps": 2}.items()},
    **{f"{m}.{k}": v for m in ("grpo", "rloo") for k, v in {"max_steps": 2, "per_device_train_batch_size": 8,
                                                            "num_generations": 4, "max_completion_length": 8,
                                                            "logging_steps": 1}.items()},
    "ppo.num_iterations": 2, "ppo.rollout_batch_size": 8, "ppo.mini_batch_size": 4, "ppo.ppo_epochs": 1,
    "ppo.max_new_tokens": 8,
    "online_dpo.rounds": 2, "online_dpo.samples_per_prompt": 3, "online_dpo.prompts_per_round": 16,
    "online_dpo.max_new_tokens": 8, "online_dpo.min_margin": 0.0, "online_dpo.max_steps": 2,
    "online_dpo.logging_steps": 1, "online_dpo.eval_steps": 2, "online_dpo.save_steps": 1,
    "export.on_failed_gate": "export",  # a few steps do not make a policy that passes eval.gate; gate tests set it
}


def write_params(path: Path, overrides: dict) -> Path:
    """The repo's params.yaml with `overrides` (dotted keys) applied, written to `path`."""
    from rlhf import config

    return config.write_with_overrides(REPO / "params.yaml", path, overrides)


def repo_params(overrides: dict | None = None):
    """The repo's params.yaml with `overrides` (dotted keys, e.g. {"sft.max_steps": 2}) applied, loaded and validated.
    Tests start from the settings the pipeline runs: the config dataclasses have no defaults of their own."""
    from rlhf import config

    return config.load(REPO / "params.yaml", overrides)


def repo_section(section: str, /, **fields):
    """One section of `repo_params()` with `fields` set, e.g. repo_section("model", dtype="bfloat16")."""
    return getattr(repo_params({f"{section}.{key}": value for key, value in fields.items()}), section)


def run_stage(workdir: Path, name: str, *args: str) -> None:
    """Run stages/<name>.py's main() in-process, in `workdir` (where its params.yaml is), on paths.yaml's layout
    inside it; `args` give paths elsewhere (`--base`, DIR)."""
    import contextlib
    import importlib
    import sys

    module = importlib.import_module(f"stages.{name}")
    argv = sys.argv
    with contextlib.chdir(workdir):
        sys.argv = [name, *args]
        try:
            module.main()
        finally:
            sys.argv = argv


def data_stages(root: Path, overrides: dict) -> Path:
    """fetch, prepare, base and tokenize in `root` on the repo's params with `overrides`."""
    write_params(root / "params.yaml", overrides)
    for name in ("fetch", "prepare", "base", "tokenize"):
        run_stage(root, name)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A work folder after the data stages on tiny settings: data/tokenized and models/base exist."""
    return data_stages(tmp_path_factory.mktemp("tiny"), TINY)


def reference_stage(root: Path, tokenized: str = "data/tokenized", base: str = "models/base",
                    sft: str = "models/sft") -> None:
    """The reference stage in `root` (DPO's reference log-probs, data/reference)."""
    run_stage(root, "reference", "--tokenized", str(tokenized), "--base", str(base), "--sft", str(sft), "--reference",
              "data/reference")


def evaluate_stages(root: Path, tokenized: str = "data/tokenized", base: str = "models/base",
                    sft: str = "models/sft", reward: str = "models/reward") -> None:
    """The sft_answers and evaluate stages in `root`, on its models/policy and its params (eval.* differ by test)."""
    inputs = ("--tokenized", str(tokenized), "--base", str(base), "--sft", str(sft), "--reward", str(reward))
    run_stage(root, "sft_answers", *inputs, "--sft-answers", "data/sft_answers")
    run_stage(root, "evaluate", *inputs, "--policy", "models/policy", "--sft-answers", "data/sft_answers",
              "--eval-metrics", "metrics/eval.json", "--samples", "metrics/samples.jsonl", "--eval-plots", "metrics/plots")


@pytest.fixture(scope="session")
def tiny_trained(tiny_data):
    """`tiny_data` after the sft, reward and reference stages as well."""
    if not (tiny_data / "data/reference").exists():
        run_stage(tiny_data, "sft", "--tokenized", "data/tokenized", "--base", "models/base", "--sft", "models/sft",
                  "--sft-metrics", "metrics/sft.json", "--sft-live", "dvclive/sft", "--sft-checkpoints", "checkpoints/sft")
        run_stage(tiny_data, "reward", "--tokenized", "data/tokenized", "--base", "models/base", "--sft",
                  "models/sft", "--reward", "models/reward", "--reward-metrics", "metrics/reward.json", "--reward-live",
                  "dvclive/reward", "--reward-checkpoints", "checkpoints/reward")
        reference_stage(tiny_data)
    return tiny_data


@pytest.fixture
def params_file(tmp_path):
    """Write a params.yaml from the repo's, with `overrides` applied as dotted keys; returns its path."""
    return lambda overrides=None: write_params(tmp_path / "params.yaml", overrides or {})


def pytest_collection_modifyitems(items):
    """The one rule for the slow tier: every test under tests/slow/ is marked slow, and no other test is."""
    for item in items:
        if SLOW in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.slow)
