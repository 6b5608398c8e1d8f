"""Benchmark: what the default evaluation costs, and how wide an oracle win-rate interval it buys (issue 19: the default
eval.num_prompts and validation size must give an interval at most +-0.05 wide).

    python -m bench.evaluate_cost                    # a scratch project on the default params, few training steps
    python -m bench.evaluate_cost --project .        # reuse a project where the default `dvc repro` has run
    python -m bench.evaluate_cost --out /tmp/bench.json

The sft_answers and evaluate stage commands run, each in its own process, in a scratch folder whose inputs (tokenized
data, base, SFT, reward model, policy) come from `--project`, or, without it, from a scratch project on the default
params where only the training steps are cut (the evaluation's own settings, the data and the model shape stay the
defaults, so the cost is the default's; a barely trained model stops less often, so answers are longer and the figure
is an upper bound). Writes the `evaluate_cost` section of the JSON file: each stage's wall time and peak RSS, the
prompts answered, and the oracle win-rate interval, measured and at worst (Wilson at a 0.5 win rate, the widest)."""
import argparse
import tempfile
from pathlib import Path

from bench import machine, pipeline
from rlhf import config, stats, tokenize
from rlhf.io import read_json, write_json
from rlhf.paths import layout

REPO = Path(__file__).resolve().parents[1]
# The training stages' steps only: the figure is the evaluation's cost, not the policy's quality.
FEW_STEPS = {"model.pretrain.max_steps": 30, "method": "dpo", "export.enabled": False,
             **{f"{s}.{k}": v for s in ("sft", "reward", "dpo") for k, v in
                {"max_steps": 4, "eval_steps": 4, "save_steps": 4, "logging_steps": 1}.items()}}
SETUP_STAGES = ("fetch", "prepare", "base", "tokenize", "sft", "reward", "reference", "align")
INPUTS = ("tokenized", "base", "sft", "reward", "policy")


def scratch_project(root: Path) -> Path:
    """Every stage before sft_answers, on the default params with FEW_STEPS, in `root`."""
    root.mkdir()
    config.write_with_overrides(REPO / "params.yaml", root / "params.yaml", FEW_STEPS)
    stages = pipeline.stages(REPO)
    for name in SETUP_STAGES:
        pipeline.timed(stages[name]["cmd"], root, root / f"{name}.log", pythonpath=REPO)
    return root


def run(project: Path, work: Path) -> dict:
    paths, stages = layout(), pipeline.stages(REPO)
    # -- the inputs as links, so that the project's own outputs stay untouched
    (work / "params.yaml").symlink_to((project / "params.yaml").resolve())
    for name in INPUTS:
        link = work / getattr(paths, name)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((project / getattr(paths, name)).resolve())
    timings = {name: pipeline.timed(stages[name]["cmd"], work, work / f"{name}.log", pythonpath=REPO)
               for name in ("sft_answers", "evaluate")}
    metrics, params = read_json(work / paths.eval_metrics), config.load(work / "params.yaml")
    prompts = len(tokenize.load_split(work / paths.tokenized, "validation", 10**9)["prompt_ids"][
        : params.eval.num_prompts])
    worst = stats.wilson_interval(prompts // 2, prompts)
    return {"prompts_answered": prompts, "eval_num_prompts": params.eval.num_prompts,
            "max_new_tokens": params.eval.max_new_tokens, "batch_size": params.eval.batch_size,
            "sft_answers": timings["sft_answers"], "evaluate": timings["evaluate"],
            "oracle_win_rate": metrics.get("oracle_win_rate"),
            "oracle_win_rate_ci_half_width": round((metrics["oracle_win_rate_ci_high"]
                                                    - metrics["oracle_win_rate_ci_low"]) / 2, 4)
            if "oracle_win_rate_ci_high" in metrics else None,
            "worst_case_ci_half_width": round((worst[1] - worst[0]) / 2, 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a folder where the default `dvc repro` has run")
    parser.add_argument("--out", type=Path, default=REPO / "metrics/bench.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = args.project or scratch_project(Path(tmp) / "project")
        (Path(tmp) / "measure").mkdir()
        section = run(project, Path(tmp) / "measure")
    section["inputs"] = "the outputs of a default `dvc repro` (--project)" if args.project else f"default params, {FEW_STEPS}"
    report = read_json(args.out) if args.out.is_file() else {}
    report["evaluate_cost"] = {**section, **machine.stamp()}
    write_json(args.out, report)
    print(section)


if __name__ == "__main__":
    main()
