"""Resuming after a crash: only complete checkpoints of the same configuration are resumed from, and a stage killed
with SIGKILL mid-run finishes, when run again, with the adapter and metrics of a run that was never interrupted."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rlhf import resuming
from tests.conftest import REPO, TINY, write_params
from rlhf.paths import layout


def make_checkpoint(folder, step, complete=True):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        resuming.mark_complete(path, step)
    return path


def test_resume_point_takes_the_newest_complete_checkpoint(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "data.arrow").write_text("rows")
    checkpoints = tmp_path / "checkpoints"
    assert resuming.resume_point(checkpoints, [inputs], lr=1.0) is None  # nothing yet; records the fingerprint
    make_checkpoint(checkpoints, 2)
    newest = make_checkpoint(checkpoints, 10)
    half_written = make_checkpoint(checkpoints, 12, complete=False)  # the crash came while saving it
    assert resuming.resume_point(checkpoints, [inputs], lr=1.0) == str(newest)
    assert not half_written.exists()
    assert resuming.resume_point(checkpoints, [inputs], lr=1.0) == str(newest)  # resuming twice is fine


def test_the_last_step_is_not_resumed_from(tmp_path):
    """Resumed from its final step, the Trainer would take one step too many: take the checkpoint before it."""
    checkpoints = tmp_path / "checkpoints"
    resuming.resume_point(checkpoints, [], lr=1.0)
    before = make_checkpoint(checkpoints, 5)
    (make_checkpoint(checkpoints, 10) / "trainer_state.json").write_text('{"global_step": 10, "max_steps": 10}')
    (before / "trainer_state.json").write_text('{"global_step": 5, "max_steps": 10}')
    assert resuming.resume_point(checkpoints, [], lr=1.0) == str(before)


@pytest.mark.parametrize("change", ["params", "inputs"])
def test_checkpoints_of_another_configuration_are_discarded(tmp_path, change):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "data.arrow").write_text("rows")
    checkpoints = tmp_path / "checkpoints"
    resuming.resume_point(checkpoints, [inputs], lr=1.0)
    old = make_checkpoint(checkpoints, 10)
    if change == "inputs":
        (inputs / "data.arrow").write_text("other rows")
    assert resuming.resume_point(checkpoints, [inputs], lr=1.0 if change == "inputs" else 2.0) is None
    assert not old.exists()


def test_prune_keeps_the_newest(tmp_path):
    for step in (2, 4, 6):
        make_checkpoint(tmp_path, step)
    resuming.prune_checkpoints(tmp_path, "checkpoint-", keep=2)
    assert [p.name for p in resuming.complete_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]


# -- a real crash ----------------------------------------------------------------------------------------------------

LONG_SFT = {**TINY, "sft.max_steps": 150, "sft.save_steps": 5, "sft.logging_steps": 5, "sft.eval_steps": 50}


def sft_command(out: str) -> list[str]:
    return [sys.executable, "-m", "stages.sft", "--sft", out, "--sft-metrics", f"metrics/{out}.json", "--sft-live",
            f"dvclive/{out}", "--sft-checkpoints", "checkpoints/sft"]


def test_sft_killed_mid_run_resumes_to_the_same_result(tiny_data, tmp_path):
    """SIGKILL once a checkpoint is complete; the rerun resumes from it and ends bit-identical to an uninterrupted
    run (CPU, same thread count: the Trainer restores weights, optimizer, scheduler, RNG and data order)."""
    write_params(tmp_path / "params.yaml", LONG_SFT)
    for folder in ("data/tokenized", "models/base"):
        (tmp_path / folder).parent.mkdir(exist_ok=True)
        (tmp_path / folder).symlink_to(tiny_data / folder)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(sft_command("whole"), cwd=tmp_path, env=env, check=True, capture_output=True)

    crashed = subprocess.Popen(sft_command("resumed"), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((tmp_path / "checkpoints/sft").glob(f"checkpoint-*/{resuming.COMPLETE}")):
        assert crashed.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
        time.sleep(0.02)
    crashed.send_signal(signal.SIGKILL)
    assert crashed.wait() == -signal.SIGKILL
    assert not (tmp_path / "resumed").exists()  # nothing half-written where a finished output belongs
    last = resuming.complete_checkpoints(tmp_path / "checkpoints/sft")[-1]
    assert int(last.name.split("-")[1]) < LONG_SFT["sft.max_steps"]

    rerun = subprocess.run(sft_command("resumed"), cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    assert "checkpoints: resuming from" in rerun.stdout
    whole, resumed = (json.loads((tmp_path / f"metrics/{name}.json").read_text()) for name in ("whole", "resumed"))
    whole.pop("train_seconds"), resumed.pop("train_seconds")
    assert resumed == whole
    for name in ("adapter_model.safetensors", "sft.json"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    curve = (tmp_path / "dvclive/resumed/plots/metrics/loss.tsv").read_text().splitlines()
    assert len(curve) == 1 + LONG_SFT["sft.max_steps"] // 5  # the replayed first half and the resumed second half
    assert not (tmp_path / "checkpoints/sft").exists()


def test_dpo_resumed_from_an_earlier_checkpoint_ends_the_same(tiny_trained, tmp_path):
    """The align methods go through train.fit: a run whose last checkpoint (step 4) was cut off while saving resumes
    from step 2 and ends with the same adapter and metrics as the run that was not cut off."""
    import dataclasses

    from rlhf import config
    from rlhf.methods import dpo

    params = config.load(write_params(tmp_path / "params.yaml", {**TINY, "dpo.max_steps": 4}))
    params = dataclasses.replace(params, method="dpo")
    checkpoints = tmp_path / "checkpoints"

    def run(out):
        paths = layout().under(tiny_trained).replace(align_checkpoints=checkpoints, align_live=tmp_path / "dvclive" / out)
        metrics, _ = dpo.run(params, paths, tmp_path / out)
        return {k: v for k, v in metrics.items() if k != "train_seconds"}

    whole = run("whole")
    (checkpoints / "checkpoint-4" / resuming.COMPLETE).unlink()
    resumed = run("resumed")
    assert resumed == whole and whole["steps"] == 4
    assert (tmp_path / "resumed/adapter_model.safetensors").read_bytes() == \
        (tmp_path / "whole/adapter_model.safetensors").read_bytes()
