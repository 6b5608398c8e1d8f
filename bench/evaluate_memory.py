"""Benchmark: the evaluate stage's peak memory before and after rlhf/models.py (issue 18), on the Qwen2-0.5B-shaped
model. Before, evaluate loaded the base weights three times (reward model, SFT model, policy with SFT merged again);
after, twice (reward model, and one policy whose disabled adapter is the SFT reference).

    python -m bench.evaluate_memory [--before 8d09821] [--quick] [--out metrics/bench.json]

One small project on the model folder (as bench/qwen.py makes it) runs every stage up to evaluate once, with this
working tree's code and one training step each; then the evaluate stage runs on those same inputs with the code at
`--before` (a clone) and with this tree's, each in its own process, and its peak RSS is recorded. Writes the
`evaluate_memory` section of the JSON file."""
import argparse
import subprocess
import tempfile
from pathlib import Path

from bench import machine, pipeline, qwen, trainers
from rlhf import config
from rlhf.io import read_json, write_json

REPO = Path(__file__).resolve().parents[1]
# One step of everything: the figure is evaluate's memory, not the policy's quality.
STEPS = {**qwen.SETTINGS, **{f"{s}.{k}": v for s in ("sft", "reward", "dpo") for k, v in
                             {"max_steps": 1, "eval_steps": 1, "save_steps": 1, "logging_steps": 1,
                              "per_device_train_batch_size": 2}.items()},
         "method": "dpo", "align.oracle_eval_prompts": 2, "align.max_new_tokens": 4, "eval.num_prompts": 4,
         "eval.max_new_tokens": 8, "eval.batch_size": 4, "reference.batch_size": 8, "export.enabled": False}
BEFORE_STAGES = ("fetch", "prepare", "base", "tokenize", "sft", "reward", "reference", "align", "sft_answers")


def code_at(rev: str, dst: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(dst)], check=True)
    subprocess.run(["git", "-C", str(dst), "checkout", "--quiet", rev], check=True)
    return dst


def run(work: Path, before: str, quick: bool) -> dict:
    stages = pipeline.stages(REPO)
    # -- a tokenizer to save with the random weights: the built-in tiny model's (its ids are all below the vocab)
    tiny = work / "tiny"
    tiny.mkdir()
    config.write_with_overrides(REPO / "params.yaml", tiny / "params.yaml", {"model.pretrain.max_steps": 1})
    for name in ("fetch", "prepare", "base"):
        pipeline.timed(stages[name]["cmd"], tiny, tiny / f"{name}.log", pythonpath=REPO)
    folder = work / "qwen2-0.5b-shaped"
    made = trainers.isolated(qwen.make_model, folder, tiny / pipeline.first_out(stages["base"]),
                             qwen.QUICK_SHAPE if quick else qwen.QWEN2_0_5B)
    # -- the project, every stage before evaluate with this tree's code
    root = work / "project"
    root.mkdir()
    config.write_with_overrides(REPO / "params.yaml", root / "params.yaml", {**STEPS, "model.name": str(folder)})
    setup = {name: pipeline.timed(stages[name]["cmd"], root, root / f"{name}.log", pythonpath=REPO)
             for name in BEFORE_STAGES}
    # -- evaluate, before and after, on the same inputs
    old = code_at(before, work / "before")
    results = {}
    for label, code in (("before", old), ("after", REPO)):
        # each commit's own params.yaml (the config rejects keys it does not know) with the same settings
        config.write_with_overrides(code / "params.yaml", root / "params.yaml", {**STEPS, "model.name": str(folder)})
        cmd = pipeline.stages(code)["evaluate"]["cmd"]  # each commit's own command line, on the same layout
        results[label] = pipeline.timed(cmd, root, root / f"evaluate-{label}.log", pythonpath=code)
        results[label]["metrics"] = read_json(root / pipeline.first_out(stages["evaluate"], "metrics"))
    same = results["before"]["metrics"] == results["after"]["metrics"]
    return {"shape": "a reduced shape (--quick)" if quick else "Qwen2-0.5B", "model": made, "before_commit": before,
            "setup_seconds": round(sum(s["wall_seconds"] for s in setup.values()), 1),
            "before": {k: v for k, v in results["before"].items() if k != "metrics"},
            "after": {k: v for k, v in results["after"].items() if k != "metrics"},
            "peak_rss_saved_mib": round(results["before"]["peak_rss_mib"] - results["after"]["peak_rss_mib"], 1),
            "same_metrics": same}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="8d09821", help="the commit to compare with (evaluate loading 3 bases)")
    parser.add_argument("--quick", action="store_true", help="2 layers of width 64 (the vocabulary stays)")
    parser.add_argument("--out", type=Path, default=REPO / "metrics/bench.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        section = run(Path(tmp), args.before, args.quick)
    report = read_json(args.out) if args.out.is_file() else {}
    report["evaluate_memory"] = {**section, **machine.stamp()}
    write_json(args.out, report)
    print(section)


if __name__ == "__main__":
    main()
