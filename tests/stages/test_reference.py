"""The reference stage: DPO's reference log-probs computed once equal TRL's own, and DPO trained on them equals DPO
with TRL computing the reference in every step."""
import dataclasses
import json

import pytest
import torch
from datasets import load_from_disk

from rlhf import config, models, reference, tokenize, train
from rlhf.io import UserError
from rlhf.methods import dpo
from rlhf.paths import layout

INPUTS = ("data/tokenized", "models/base", "models/sft", "models/reward", "data/reference")


def test_reference_stage_output(tiny_trained):
    """One row per tokenized pair, in data/tokenized's order, and a manifest that names the same rows."""
    saved = load_from_disk(str(tiny_trained / "data/reference"))
    manifest = json.loads((tiny_trained / "data/reference" / reference.MANIFEST).read_text())
    tokenized = json.loads((tiny_trained / "data/tokenized" / tokenize.MANIFEST).read_text())
    for split in reference.SPLITS:
        rows = tokenize.load_split(tiny_trained / "data/tokenized", split, 10**9)
        assert saved[split].column_names == ["id", *reference.COLUMNS]
        assert list(saved[split]["id"]) == list(rows["id"])
        assert manifest[split] == {"rows": len(rows), "ids_sha256": tokenized[split]["ids_sha256"]}
        assert all(v < 0 for column in reference.COLUMNS for v in saved[split][column])  # log-probs of >= 1 token


def test_reference_logprobs_equal_trls_own_reference_pass(tiny_trained, tmp_path):
    """DPOTrainer with precompute_ref_log_probs and rows without the columns runs TRL's own reference pass (the
    policy's new adapter disabled, its fused log-prob head, its batches): it gives the stage's values, up to float
    rounding."""
    from trl import DPOConfig

    params = config.load(tiny_trained / "params.yaml")
    section, lora, _ = train.resolve(params, params.dpo, None)
    rows = {split: tokenize.load_split(tiny_trained / "data/tokenized", split, 10**9).remove_columns("id")
            for split in reference.SPLITS}
    args = DPOConfig(output_dir=str(tmp_path), precompute_ref_log_probs=True, per_device_train_batch_size=16,
                     per_device_eval_batch_size=16, max_length=section.max_length, report_to=[],
                     **train.precision_args(params.model))
    trainer = dpo.PretokenizedDPOTrainer(
        model=models.sft_merged(tiny_trained / "models/base", tiny_trained / "models/sft", params.model),
        ref_model=None, args=args, train_dataset=rows["train"], eval_dataset=rows["validation"],
        processing_class=models.tokenizer(tiny_trained / "models/base"),
        peft_config=train.lora_config(lora, "CAUSAL_LM"))
    ours = load_from_disk(str(tiny_trained / "data/reference"))
    for split, theirs in (("train", trainer.train_dataset), ("validation", trainer.eval_dataset)):
        for column in reference.COLUMNS:
            torch.testing.assert_close(torch.tensor(ours[split][column]), torch.tensor(theirs[column]),
                                       rtol=1e-5, atol=1e-4)


def test_a_reference_for_other_rows_is_refused(tiny_trained, tmp_path):
    """Reversed rows, or a reference missing a row, is a UserError naming the stage to rerun."""
    rows = tokenize.load_split(tiny_trained / "data/tokenized", "validation", 10**9)
    saved = load_from_disk(str(tiny_trained / "data/reference"))
    for name, bad in (("reversed", saved["validation"].select(range(len(rows) - 1, -1, -1))),
                      ("short", saved["validation"].select(range(len(rows) - 1)))):
        type(saved)({"train": saved["train"], "validation": bad}).save_to_disk(str(tmp_path / name))
        with pytest.raises(UserError, match=r"validation log-probs are for other rows.*dvc repro reference"):
            reference.add_columns(rows, tmp_path / name, "validation")
    assert reference.add_columns(rows, tiny_trained / "data/reference", "validation").column_names == \
        [*rows.column_names, *reference.COLUMNS]


def run_dpo(root, out, params):
    paths = layout().under(root).replace(align_checkpoints=out / "checkpoints", align_live=out / "live")
    metrics, _ = dpo.run(params, paths, out / "policy")
    return {k: v for k, v in metrics.items() if k != "train_seconds"}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_on_the_reference_stage_equals_trl_computing_the_reference(tiny_trained, tmp_path, monkeypatch,
                                                                       loss_type):
    """The same seed, rows and steps: DPO reading the reference stage's columns (no reference forward at all: not in
    a step, not in TRL's own reference pass) and plain TRL computing the reference on the fly (precompute off, no
    columns) log the same losses, rewards, margins and log-probs, train and eval, up to float rounding."""
    import trl.trainer.dpo_trainer
    from trl import DPOConfig

    params = config.load(tiny_trained / "params.yaml")
    params = dataclasses.replace(params, dpo=dataclasses.replace(params.dpo, loss_type=loss_type))
    with monkeypatch.context() as patch:  # TRL runs the reference (the adapter disabled) only inside use_adapter
        patch.setattr(trl.trainer.dpo_trainer, "use_adapter", lambda *a, **k: pytest.fail("a reference forward"))
        cached = run_dpo(tiny_trained, tmp_path / "cached", params)
    monkeypatch.setattr(reference, "add_columns", lambda rows, reference_dir, split: rows)
    monkeypatch.setattr(dpo, "DPOConfig", lambda **kw: DPOConfig(**{**kw, "precompute_ref_log_probs": False}))
    on_the_fly = run_dpo(tiny_trained, tmp_path / "on-the-fly", params)
    assert cached["steps"] == on_the_fly["steps"] == params.dpo.max_steps
    assert set(cached) == set(on_the_fly)
    for key in ("loss", "rewards_margins", "logps_chosen", "logps_rejected", "eval_loss", "eval_rewards_margins"):
        assert key in cached, key
    for key, value in cached.items():  # fit rounds to 6 decimals; the settings the preset chose are not numbers
        assert value == (pytest.approx(on_the_fly[key], rel=1e-4, abs=2e-6) if isinstance(value, float)
                         else on_the_fly[key]), key
