"""Several processes through accelerate: when a stage relaunches itself, the shipped accelerate configs, and SFT and
DPO run as 2 gloo processes on CPU through the same stage commands, against the same stages in one process."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from rlhf import align, launch, models
from rlhf.config import ConfigError
from tests.conftest import REPO, TINY, repo_params, repo_section, write_params


def test_one_process_does_the_work_itself(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("launched"))
    assert launch.relaunch(repo_section("compute"), "stages.sft") is False
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside a launch (ours, or accelerate launch / torchrun by hand)
    assert launch.relaunch(repo_section("compute", num_processes=2), "stages.sft") is False


def test_relaunch_command(monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv(launch.LAUNCHED, raising=False)
    monkeypatch.setattr(sys, "argv", ["stages/sft.py", "--sft", "models/sft"])
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, env: calls.append((cmd, env)) or subprocess.CompletedProcess(cmd, 0))
    assert launch.relaunch(repo_section("compute", num_processes=2), "stages.sft") is True
    cmd, env = calls[-1]
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[-4:] == ["-m", "stages.sft", "--sft", "models/sft"]
    assert env[launch.LAUNCHED] == "1" and str(REPO) in env["PYTHONPATH"].split(os.pathsep)
    config = tmp_path / "zero3.yaml"
    config.write_text("distributed_type: DEEPSPEED\n")
    launch.relaunch(repo_section("compute", accelerate_config=str(config)), "stages.sft")
    cmd, _ = calls[-1]
    assert cmd[cmd.index("--config_file") + 1] == str(config) and "--num_processes" not in cmd  # the file says


def test_missing_accelerate_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="compute.accelerate_config = 'configs/nope.yaml' is not a file"):
        repo_section("compute", accelerate_config="configs/nope.yaml")


def test_ppo_refuses_several_processes():
    with pytest.raises(Exception, match="method ppo trains in one process"):
        align.check_processes(repo_params({"method": "ppo", "compute.num_processes": 2}))


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "configs/accelerate/*.yaml"))))
def test_shipped_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(path)
    assert config.distributed_type.value in ("MULTI_GPU", "DEEPSPEED", "FSDP")
    assert config.mixed_precision == "no"  # precision comes from model.dtype through the Trainer
    if config.distributed_type.value == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] in (2, 3)
        assert "gradient_accumulation_steps" not in config.deepspeed_config  # params.yaml decides it


# -- 2 processes on CPU ---------------------------------------------------------------------------------------------

def run_stage_command(work, name: str, overrides: dict, *args: str) -> subprocess.CompletedProcess:
    write_params(work / "params.yaml", {**TINY, **overrides})
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=work, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def link_inputs(tiny, work, names):
    for name in names:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).symlink_to(tiny / name)


def sft_args(out):
    return ("--sft", out, "--sft-metrics", f"metrics/{out}.json", "--sft-live", f"dvclive/{out}", "--sft-checkpoints",
            f"checkpoints/{out}")


def test_sft_with_two_processes(tiny_data, tmp_path):
    """Per-device batch 16 on 2 processes against 32 on one: each step takes the same 32 rows of the same split in
    the same order (the tokens seen, counted over both processes, are equal), the adapter is valid, and only the
    main process writes metrics, curves and output."""
    link_inputs(tiny_data, tmp_path, ["data/tokenized", "models/base"])
    one = run_stage_command(tmp_path, "sft", {"sft.per_device_train_batch_size": 32}, *sft_args("one"))
    two = run_stage_command(tmp_path, "sft", {"sft.per_device_train_batch_size": 16, "compute.num_processes": 2},
                            *sft_args("two"))
    assert "launching 2 processes" in two.stdout and "launching" not in one.stdout
    assert two.stdout.count("sft: {") == 1  # the final report: main process only
    m1, m2 = (json.loads((tmp_path / f"metrics/{n}.json").read_text()) for n in ("one", "two"))
    assert m2["steps"] == m1["steps"] == TINY["sft.max_steps"]
    assert m2["tokens_seen"] == m1["tokens_seen"]
    assert m2["eval_loss"] == pytest.approx(m1["eval_loss"], rel=0.02)  # the loss is averaged per process
    curve = (tmp_path / "dvclive/two/plots/metrics/loss.tsv").read_text().splitlines()
    assert len(curve) == 1 + TINY["sft.max_steps"]  # logged once per step, not once per process
    assert not list(tmp_path.glob("*.tmp-*")) and not (tmp_path / "checkpoints/two").exists()

    from peft import PeftModel

    base = models.base_model(tmp_path / "models/base", repo_section("model")).eval()
    ids = torch.tensor([[5, 17, 23, 42, 7]])
    with torch.no_grad():
        before = base(ids).logits
        after = PeftModel.from_pretrained(base, tmp_path / "two").eval()(ids).logits
    assert torch.isfinite(after).all() and not torch.allclose(before, after)


def test_dpo_with_two_processes_through_an_accelerate_config(tiny_trained, tmp_path):
    """DPO's loss is a mean over pairs, so 2 processes of 16 pairs compute the 1-process gradient of 32 pairs up to
    float rounding: the metrics agree closely."""
    link_inputs(tiny_trained, tmp_path, ["data/tokenized", "models/base", "models/sft", "models/reward",
                                         "data/reference"])
    (tmp_path / "configs").symlink_to(REPO / "configs")

    def align_args(out):
        return ("--policy", out, "--align-metrics", f"metrics/{out}.json", "--align-live", f"dvclive/{out}",
                "--align-checkpoints", f"checkpoints/{out}")

    run_stage_command(tmp_path, "align", {"method": "dpo", "dpo.per_device_train_batch_size": 32}, *align_args("one"))
    two = run_stage_command(tmp_path, "align", {
        "method": "dpo", "dpo.per_device_train_batch_size": 16, "compute.num_processes": 2,
        "compute.accelerate_config": "configs/accelerate/ddp.yaml"}, *align_args("two"))
    assert "--config_file configs/accelerate/ddp.yaml" in two.stdout
    m1, m2 = (json.loads((tmp_path / f"metrics/{n}.json").read_text()) for n in ("one", "two"))
    assert m2["steps"] == m1["steps"] and m2["num_input_tokens_seen"] == m1["num_input_tokens_seen"]
    for key in ("loss", "rewards_margins", "logps_chosen", "logps_rejected"):  # the last step's training metrics
        assert m2[key] == pytest.approx(m1[key], rel=1e-3, abs=1e-4), key
    # Validation is sharded too, and accelerate pads the last batch with repeated rows (20 rows, 2 x 16): the TRL
    # trainers' eval_* metrics then differ a little from one process (README, "Several GPUs and machines").
    assert m2["eval_loss"] == pytest.approx(m1["eval_loss"], rel=0.01)
    assert {"oracle_sft", "oracle_policy"} <= set(m2)  # the main process ran the align stage's own check
    info = json.loads((tmp_path / "two" / align.INFO_FILE).read_text())
    assert info["params"]["compute"]["num_processes"] == 2
    model = models.policy(tmp_path / "models/base", tmp_path / "models/sft", tmp_path / "two", repo_section("model"))
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[5, 17, 23, 42, 7]])).logits).all()
