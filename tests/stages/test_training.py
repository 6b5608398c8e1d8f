"""SFT and reward stages: presets, hardware checks, completion-only loss, adapters that load back, reward scores."""
import dataclasses
import json

import pytest
import torch

from rlhf import base, config, models, reward, scoring, sft, tokenize, train
from tests.conftest import repo_params, repo_section
from rlhf.io import UserError
from rlhf.paths import layout


def sft_paths(root, checkpoints, live):
    """The stage paths in `root`, with the SFT checkpoints and curves elsewhere."""
    return layout().under(root).replace(sft_checkpoints=checkpoints, sft_live=live)


# -- presets and hardware checks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, memory_gb, expected", [
    ("auto", None, "cpu"), ("auto", 6.0, "low_memory"), ("auto", 7.9, "low_memory"), ("auto", 8.0, "standard"),
    ("auto", 80.0, "standard"), ("low_memory", 80.0, "low_memory"), ("standard", 4.0, "standard"),
    ("cpu", 24.0, "cpu"),
])
def test_preset_from_memory(preset, memory_gb, expected):
    assert train.choose_preset(preset, memory_gb) == expected


def test_preset_fills_nulls_and_explicit_values_win():
    params = repo_params()
    section, lora, chosen = train.resolve(params, params.sft, memory_gb=6.0)
    assert (lora.r, lora.lora_alpha) == (16, 32)
    assert (section.per_device_train_batch_size, section.gradient_accumulation_steps, section.max_length) == (1, 8, 1024)
    assert chosen["preset"] == "low_memory" and chosen["accelerator_memory_gb"] == 6.0
    section, lora, chosen = train.resolve(params, params.sft, memory_gb=40.0)
    assert (lora.r, section.per_device_train_batch_size, section.gradient_accumulation_steps, section.max_length) \
        == (64, 4, 2, 2048)
    explicit = dataclasses.replace(params, lora=dataclasses.replace(params.lora, r=4, lora_alpha=7),
                                   sft=dataclasses.replace(params.sft, per_device_train_batch_size=3))
    section, lora, chosen = train.resolve(explicit, explicit.sft, memory_gb=40.0)
    assert (lora.r, lora.lora_alpha, section.per_device_train_batch_size, section.max_length) == (4, 7, 3, 2048)
    assert chosen["lora_r"] == 4 and chosen["per_device_train_batch_size"] == 3


def test_precision_checks(monkeypatch):
    """A GPU without bf16: bfloat16 is refused before loading, and auto means fp16 there (CPU cases:
    tests/test_precision.py)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(base, "weights_location", lambda *_: pytest.fail("loaded weights before checking hardware"))
    with pytest.raises(UserError, match="does not support bf16. Set model.dtype: float16"):
        models.base_model("unused", repo_section("model", dtype="bfloat16"))
    assert models.torch_dtype(repo_section("model")) == torch.float16


def test_max_length_too_small_for_the_data(tiny_data):
    with pytest.raises(UserError, match=r"longest train pair is \d+ tokens but the training max_length is 8"):
        tokenize.load_split(tiny_data / "data/tokenized", "train", max_length=8)


# -- SFT -------------------------------------------------------------------------------------------------------------

def test_completion_only_loss_on_a_hand_made_example(tiny_data):
    """What SFTTrainer feeds the model: labels are -100 on the prompt (and padding), the token ids elsewhere."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = models.tokenizer(tiny_data / "models/base")
    example = tokenize.encode({"id": "x", "prompt": [{"role": "user", "content": "How was the pizza?"}],
                               "chosen": [{"role": "assistant", "content": "the pizza was great."}],
                               "rejected": [{"role": "assistant", "content": "it was awful."}]}, tokenizer, "keep")
    short = {**example, "chosen_ids": example["chosen_ids"][:3]}
    data = Dataset.from_list([tokenize.sft_columns(example), tokenize.sft_columns(short)])
    model = models.base_model(tiny_data / "models/base", repo_section("model"))
    args = SFTConfig(output_dir=str(tiny_data / "scratch"), per_device_train_batch_size=2, report_to=[],
                     completion_only_loss=True, bf16=False, use_cpu=True, shuffle_dataset=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    n_prompt, n_chosen = len(example["prompt_ids"]), len(example["chosen_ids"])
    ids = example["prompt_ids"] + example["chosen_ids"]
    assert batch["labels"][0].tolist() == [-100] * n_prompt + example["chosen_ids"]
    assert batch["input_ids"][0].tolist() == ids
    assert batch["labels"][1].tolist() == [-100] * n_prompt + example["chosen_ids"][:3] + [-100] * (n_chosen - 3)


def test_sft_stage_outputs(tiny_trained):
    out = tiny_trained / "models/sft"
    assert (out / "adapter_model.safetensors").exists() and (out / "tokenizer.json").exists()
    metrics = json.loads((tiny_trained / "metrics/sft.json").read_text())
    assert metrics["steps"] == 4 and metrics["tokens_seen"] > 0 and metrics["preset"] == "cpu"
    assert metrics["eval_perplexity"] == pytest.approx(2.718281828 ** metrics["eval_loss"], rel=1e-5)
    provenance = json.loads((out / "sft.json").read_text())
    assert provenance["params"]["sft"]["max_steps"] == 4 and "trl" in provenance["versions"]
    assert (tiny_trained / "dvclive/sft/plots/metrics/loss.tsv").exists()
    assert not (tiny_trained / "checkpoints/sft").exists()  # a finished run leaves no checkpoints to resume from


def test_sft_adapter_loads_back_with_same_outputs(tiny_data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    params = config.load(tiny_data / "params.yaml")
    out = tiny_data / "sft-memory"
    metrics, _, model = sft.train_sft(params, sft_paths(tiny_data, tiny_data / "ck", tiny_data / "live"),
                              out)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # training moved the adapter off its zero init
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_data / "models/base"), out).eval()
    ids = torch.tensor([[5, 17, 23, 42, 7, 99]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
        plain = AutoModelForCausalLM.from_pretrained(tiny_data / "models/base").eval()
        assert not torch.allclose(plain(ids).logits, loaded(ids).logits)


def test_completion_logprobs_match_the_trainers_loss(tiny_data):
    """Our token-level NLL on completions equals a direct cross-entropy over the completion tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_data / "models/base").eval()
    prompts, completions = [[3, 4, 5], [6, 7]], [[8, 9], [10, 11, 12, 13]]
    sums, counts = scoring.completion_logprobs(model, prompts, completions, pad_id=0, batch_size=2)
    assert counts.tolist() == [2, 4]
    for i in range(2):
        ids = torch.tensor([prompts[i] + completions[i]])
        labels = torch.tensor([[-100] * len(prompts[i]) + completions[i]])
        with torch.no_grad():
            loss = model(ids, labels=labels).loss.item()
        assert -sums[i].item() / counts[i].item() == pytest.approx(loss, rel=1e-5)


def test_sft_is_deterministic(tiny_data):
    params = config.load(tiny_data / "params.yaml")
    params = dataclasses.replace(params, sft=dataclasses.replace(params.sft, max_steps=2))
    runs = [sft.train_sft(params, sft_paths(tiny_data, tiny_data / "ck", tiny_data / "live"),
                              tiny_data / f"det{i}")[0] for i in range(2)]
    for m in runs:
        m.pop("train_seconds")
    assert runs[0] == runs[1]
    files = sorted(p.name for p in (tiny_data / "det0").iterdir())
    assert "adapter_model.safetensors" in files and files == sorted(p.name for p in (tiny_data / "det1").iterdir())
    for name in files:  # byte for byte, so DVC sees the same output hash and reruns nothing after it
        assert (tiny_data / "det0" / name).read_bytes() == (tiny_data / "det1" / name).read_bytes(), name


# -- reward model ----------------------------------------------------------------------------------------------------

def test_reward_stage_outputs_and_stats(tiny_trained):
    metrics = json.loads((tiny_trained / "metrics/reward.json").read_text())
    stats = json.loads((tiny_trained / "models/reward/member-0" / reward.STATS_FILE).read_text())
    for key in ("accuracy", "mean_margin", "score_mean", "score_std"):
        assert metrics[key] == stats[key]
    # one reward model (reward.ensemble.members 1): the ensemble is its only member, and scores as it does
    assert metrics["member_0_accuracy"] == metrics["ensemble_accuracy"] == metrics["accuracy"]
    assert "member_1_accuracy" not in metrics
    ensemble = json.loads((tiny_trained / "models/reward" / models.REWARD_ENSEMBLE_FILE).read_text())
    assert ensemble["members"] == ["member-0"] and ensemble["accuracy"] == metrics["accuracy"]
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["score_std"] > 0
    assert (tiny_trained / "dvclive/reward/plots/metrics/loss.tsv").exists()


def test_reward_score_matches_a_direct_forward_pass(tiny_trained):
    from datasets import load_from_disk

    model, stats = models.reward_model(tiny_trained / "models/base", tiny_trained / "models/sft",
                                            tiny_trained / "models/reward", repo_section("model"))
    tokenizer = models.tokenizer(tiny_trained / "models/base")
    validation = load_from_disk(str(tiny_trained / "data/tokenized"), keep_in_memory=True)["validation"]
    rows = [tokenize.reward_columns(validation[i]) for i in range(3)]
    sequences = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
    batched = scoring.reward_scores(model, sequences, tokenizer.pad_token_id, batch_size=6)
    with torch.no_grad():
        direct = [model(torch.tensor([s])).logits[0, 0].item() for s in sequences]
    assert batched.tolist() == pytest.approx(direct, abs=1e-5)
    # and the saved stats are what the loaded model gives on the whole validation split
    chosen, rejected = reward.score_pairs(model, validation, tokenizer.pad_token_id, 16)
    assert [s["adapter"] for s in stats] == ["member-0"]
    assert reward.pair_stats(chosen, rejected)["accuracy"] == stats[0]["accuracy"]


def test_pair_stats_hand_computed():
    stats = reward.pair_stats(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 3.0]))
    # margins 1, 0, -2: one strictly above (a tie counts as wrong); mean margin -1/3
    assert stats["accuracy"] == pytest.approx(1 / 3, abs=1e-6)
    assert stats["mean_margin"] == pytest.approx(-1 / 3, abs=1e-6)
    assert stats["score_mean"] == pytest.approx(7 / 6, abs=1e-6)
    assert stats["chosen_mean"] == pytest.approx(1.0) and stats["rejected_mean"] == pytest.approx(4 / 3, abs=1e-6)


def test_wandb_option_works_offline(tiny_data, monkeypatch, tmp_path):
    """tracking.wandb logs to an offline run (no network here) and never stops training."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    params = config.load(tiny_data / "params.yaml")
    params = dataclasses.replace(params, tracking=dataclasses.replace(params.tracking, wandb=True),
                                 sft=dataclasses.replace(params.sft, max_steps=2))
    metrics, _, _ = sft.train_sft(params, sft_paths(tiny_data, tmp_path / "ck", tmp_path / "live"),
                              tmp_path / "out")
    assert metrics["steps"] == 2
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))


def test_dvclive_failure_never_stops_training(tmp_path, monkeypatch):
    """DVCLive refuses to start in a git repo without a commit; training goes on without curves."""
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    assert train.open_live(tmp_path / "live") is None
    report_to, callbacks = train.trackers(repo_section("tracking"), tmp_path / "live")
    assert (report_to, callbacks) == ([], [])


def test_sft_with_length_grouped_batches(tiny_data, tmp_path, monkeypatch):
    """sft.train_sampling_strategy reaches the Trainer: transformers' LengthGroupedSampler orders the batches."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    used = []
    iterate = LengthGroupedSampler.__iter__
    monkeypatch.setattr(LengthGroupedSampler, "__iter__", lambda self: used.append(self) or iterate(self))
    params = config.load(tiny_data / "params.yaml")
    params = dataclasses.replace(params, sft=dataclasses.replace(params.sft, max_steps=2,
                                                                 train_sampling_strategy="group_by_length"))
    metrics, _, _ = sft.train_sft(params, sft_paths(tiny_data, tmp_path / "checkpoints", tmp_path / "live"),
                              tmp_path / "out")
    assert used and metrics["steps"] == 2


def test_dvclive_skips_studio_work_when_studio_is_not_set_up(tmp_path, monkeypatch):
    """Without DVC Studio, a logged step must not re-read the params and curves to queue them for Studio."""
    monkeypatch.chdir(tmp_path)
    live = train.open_live(tmp_path / "live")
    if live is None:  # not in a git repository with a commit: DVCLive is off, nothing to check
        pytest.skip("DVCLive needs a git repository here")
    monkeypatch.setattr(type(live).__mro__[1], "_get_live_data", lambda self: pytest.fail("prepared Studio data"))
    live.log_metric("loss", 1.0)
    live.next_step()
    assert (tmp_path / "live/plots/metrics/loss.tsv").exists()


def test_saved_adapters_list_their_modules_in_one_order(tiny_trained):
    """PEFT writes the modules `all-linear` resolves to from a set, in an order that changes between processes; the
    saved SFT and reward adapters list them sorted, so a rerun gives the same bytes and the same DVC hash."""
    for stage in ("sft", "reward"):
        folder = tiny_trained / f"models/{stage}" / ("member-0" if stage == "reward" else "")
        modules = json.loads((folder / "adapter_config.json").read_text())["target_modules"]
        assert len(modules) > 3 and modules == sorted(modules), stage
