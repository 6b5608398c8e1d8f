"""Benchmark: the pipeline's cost per stage, our trainers against plain TRL, padding, and a Qwen2-0.5B-sized model.
Writes every figure, with its unit in its name, to one JSON file. Not part of the test suite.

    python -m bench.run [--quick] [--out metrics/bench.json] [--repeats N] [--qwen-steps N] [--qwen-batch N]

--quick runs the pipeline on tiny settings and every measurement a few steps, to check that the script works (about
4 minutes on 2 quiet CPU cores); its figures mean little. The full run takes about 13 minutes there, longer when it
has to wait for other work to finish. bench/README.md says what each figure means.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench import machine, padding, pipeline, qwen, trainers
from rlhf import config
from rlhf.io import provenance, write_json

REPO = Path(__file__).resolve().parents[1]
# Steps per ours/TRL training on the tiny model: the default SFT run is about 170 steps, DPO about 110.
FULL = {"steps": {"sft": 150, "dpo": 60}, "repeats": 3, "qwen_steps": 8, "qwen_batch": 2}
QUICK = {"steps": {"sft": 5, "dpo": 5}, "repeats": 1, "qwen_steps": 2, "qwen_batch": 2}


def git() -> dict:
    """The commit the pipeline ran on (a clone of it), and the code files whose working-tree version, which the
    in-process runs of our trainers used, differs from it."""
    def out(*cmd):
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=True).stdout

    changed = out("status", "--porcelain", "--", "rlhf", "stages", "params.yaml", "paths.yaml", "dvc.yaml").splitlines()
    return {"commit": out("rev-parse", "HEAD").strip(), "working_tree_changes": [line[3:] for line in changed]}


def main():
    parser = argparse.ArgumentParser(description="Benchmark the pipeline and its trainers; writes one JSON file.")
    parser.add_argument("--quick", action="store_true", help="tiny settings and few steps: a check that it runs")
    parser.add_argument("--out", default="metrics/bench.json", help="JSON file to write")
    parser.add_argument("--repeats", type=int, help="runs of each tiny-model training (median is reported)")
    parser.add_argument("--qwen-steps", type=int, help="training steps of each Qwen-shaped run")
    parser.add_argument("--qwen-batch", type=int, help="per-device batch size of the Qwen-shaped runs")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    repeats = args.repeats or settings["repeats"]
    os.environ.update(pipeline.ENV)  # the spawned training processes inherit it

    started = time.perf_counter()
    versions = provenance()
    report = {"quick": args.quick, **machine.stamp(git=False), "git": git(), "python": versions["python"],
              "versions": versions["versions"]}
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-") as tmp:
        tmp = Path(tmp)
        # -- 1. the pipeline, stage by stage, in a clone of the committed HEAD
        clone = pipeline.clone(REPO, tmp / "repo", pipeline.QUICK if args.quick else {})
        report["pipeline"] = pipeline.run(clone, tmp / "logs")

        # -- 2. ours against plain TRL on the tiny model the pipeline trained, and length grouping's wall time
        params = config.load(clone / "params.yaml")
        stages = pipeline.stages(clone)
        data = {name: clone / pipeline.first_out(stages[stage]) for name, stage in
                (("tokenized", "tokenize"), ("base", "base"), ("prepared", "prepare"), ("weights", "base"),
                 ("sft", "sft"))}
        comparison = trainers.compare(params, data, settings["steps"], repeats, tmp, grouping=True)
        grouping_time = comparison.pop("sft_group_by_length")
        report["ours_vs_trl"] = comparison

        # -- 3. padding: random against length-grouped batches; TRL DPO's padding_free
        report["padding"] = {**padding.shares(data["tokenized"], params), "sft_trl_training_time": grouping_time,
                             "dpo_padding_free": padding.padding_free_check(data["prepared"], data["weights"])}

        # -- 4. a Qwen2-0.5B-shaped model as a user's local model folder
        report["qwen2_0_5b_shaped"] = qwen.run(clone, tmp, args.quick, args.qwen_steps or settings["qwen_steps"],
                                               args.qwen_batch or settings["qwen_batch"], 1)
    report["bench_wall_seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
