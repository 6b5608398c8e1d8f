"""The pipeline's own cost, measured in a fresh `git clone`: every dvc.yaml stage in order (wall time, peak memory,
training throughput), then `dvc repro` with nothing to do, then an experiment that changes only the method."""
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench import machine
from rlhf import config
from rlhf.io import read_json
from rlhf.paths import interpolate

# Stage commands call `python`: this interpreter's environment goes first. Nothing may reach a hub.
ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_DATASETS_OFFLINE": "1", "DO_NOT_TRACK": "1",
       "WANDB_MODE": "disabled"}
TRAINING = {"sft": "sft", "reward": "reward", "align": None}  # stage -> params section (None: the one `method` names)
# --quick: enough to show that every measurement runs end to end in minutes; its figures mean little.
QUICK = {
    "data.builtin.num_pairs": 200, "model.pretrain.max_steps": 30,
    **{f"{s}.{k}": v for s in ("sft", "reward", "dpo", "orpo") for k, v in
       {"max_steps": 4, "logging_steps": 1, "eval_steps": 4, "save_steps": 4}.items()},
    "align.oracle_eval_prompts": 8, "align.max_new_tokens": 8, "eval.num_prompts": 16, "eval.max_new_tokens": 8,
}


def environment(pythonpath: Path | None = None) -> dict:
    env = {**os.environ, **ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if pythonpath:  # a stage run outside the clone still imports the clone's stages/ and rlhf/
        env["PYTHONPATH"] = str(pythonpath)
    return env


def clone(repo: Path, dst: Path, overrides: dict) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(repo), str(dst)], check=True)
    if overrides:
        config.write_with_overrides(dst / "params.yaml", dst / "params.yaml", overrides)
    return dst


def stages(root: Path) -> dict:
    """dvc.yaml's stages, with their paths from paths.yaml as DVC resolves them."""
    return yaml.safe_load(interpolate((root / "dvc.yaml").read_text()))["stages"]


def first_out(stage: dict, kind: str = "outs") -> str:
    """The stage's first output (or metrics) path, as dvc.yaml spells it: paths live in one place."""
    entry = stage[kind][0]
    return entry if isinstance(entry, str) else next(iter(entry))


# A command's peak RSS is read by a small process of its own, which writes it to a file: a child forked from this
# process (large, once torch is imported) would have this process's RSS counted in its own peak, even after it execs.
PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)")


def timed(cmd: list[str] | str, cwd: Path, log: Path, pythonpath: Path | None = None) -> dict:
    """Run `cmd` (a string through the shell, as DVC runs stage commands), its output into `log`; its wall time and
    the peak RSS of the largest process in its tree (RUSAGE_CHILDREN covers every descendant that was waited for, so
    the stage's python counts under dvc; ru_maxrss is KiB on Linux)."""
    argv = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
    rss = log.with_suffix(".rss")
    watch = machine.Watch()
    with open(log, "w") as out:
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-c", PEAK_RSS, str(rss), *argv], cwd=cwd, env=environment(pythonpath),
                               stdout=out, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
    if code:
        raise RuntimeError(f"{cmd} failed with exit status {code}; end of its output:\n{log.read_text()[-3000:]}")
    return {"wall_seconds": round(wall, 2), "peak_rss_mib": round(int(rss.read_text()) / 1024, 1), **watch.report()}


def dvc(root: Path, logs: Path, name: str, *args: str) -> dict:
    """`dvc *args` timed, with the stages it actually ran."""
    result = timed(["dvc", *args], root, logs / f"{name}.log")
    return {**result, "stages_run": re.findall(r"Running stage '([^']+)'", (logs / f"{name}.log").read_text())}


def training_throughput(root: Path, all_stages: dict, name: str, params) -> dict:
    """Tokens per train second of a training stage. `tokens_per_second` uses the stage's own count where its metrics
    have `tokens_seen`; `real_tokens_per_second` always counts the tokenized rows the stage went through (no padding):
    rows seen x mean tokens per row."""
    from datasets import load_from_disk

    stage = all_stages[name]
    metrics = read_json(root / first_out(stage, "metrics"))
    section = getattr(params, TRAINING[name] or params.method)
    rows = load_from_disk(str(root / first_out(all_stages["tokenize"])), keep_in_memory=True)["train"]
    if name == "sft":  # prompt + chosen
        per_row = [len(p) + len(c) for p, c in zip(rows["prompt_ids"], rows["chosen_ids"])]
    else:  # pairwise: prompt + chosen and prompt + rejected
        per_row = [2 * len(p) + len(c) + len(r) for p, c, r in zip(rows["prompt_ids"], rows["chosen_ids"],
                                                                    rows["rejected_ids"])]
    seconds = metrics["train_seconds"]
    rows_seen = min(metrics["steps"] * metrics["per_device_train_batch_size"] * metrics["gradient_accumulation_steps"],
                    section.num_train_epochs * len(per_row))  # the last batch of an epoch can be short
    real = rows_seen * statistics.mean(per_row) / seconds
    out = {"train_seconds": seconds, "steps": metrics["steps"], "real_tokens_per_second": round(real, 1)}
    counted = metrics.get("tokens_seen", metrics.get("num_input_tokens_seen"))  # align's metrics use the Trainer's name
    if counted is not None:
        out |= {"tokens_per_second": round(counted / seconds, 1),
                "tokens_counted_by": "metrics tokens_seen / num_input_tokens_seen (the stage's own count)"}
    else:
        out |= {"tokens_per_second": round(real, 1),
                "tokens_counted_by": "rows seen x mean tokens per row (no padding; no tokens_seen in metrics)"}
    return out


def run(root: Path, logs: Path) -> dict:
    """Each stage with `dvc repro -s`, in dvc.yaml's order; then a no-op `dvc repro`; then `dvc exp run -S
    method=orpo`, which should rerun only align, evaluate and export."""
    logs.mkdir(parents=True, exist_ok=True)
    all_stages = stages(root)
    params = config.load(root / "params.yaml")
    result = {}
    for name in all_stages:
        result[name] = dvc(root, logs, name, "repro", "-s", name)
        if name in TRAINING:
            result[name] |= training_throughput(root, all_stages, name, params)
    total = sum(stage["wall_seconds"] for stage in result.values())
    noop = dvc(root, logs, "noop", "repro")
    exp = dvc(root, logs, "exp", "exp", "run", "-S", "method=orpo")  # a failed eval.gate: export writes only a card
    return {"stages": result, "full_pipeline_wall_seconds": round(total, 2), "noop_repro": noop,
            "exp_run_method_orpo": {**exp, "share_of_full_pipeline": round(exp["wall_seconds"] / total, 3)}}
