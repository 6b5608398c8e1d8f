"""Benchmark: what a reward-model ensemble of k LoRA adapters on one scorer costs (`reward.ensemble.members`), and how
much its members disagree on SFT's and on the policy's answers.

    python -m bench.reward_ensemble --project .        # reuse a project where the default `dvc repro` has run
    python -m bench.reward_ensemble --quick            # a scratch project on tiny settings: a check that it runs
    python -m bench.reward_ensemble --project . --size 4 --steps 63 --prompts 128 --out /tmp/bench.json

In a scratch folder with this checkout's params.yaml, whose inputs (tokenized data, base, SFT model, policy) are
links into `--project`, or, with `--quick`, a scratch project on tiny settings: the reward stage command with
`reward.ensemble.members` = `--size` (wall time, peak RSS, training seconds per member), the members' adapter bytes
against what one more score head on a shared trunk would take, the scoring time of the same answers by member 0
alone (k = 1) and by all k members, and then the sft_answers and evaluate stage commands on that ensemble: its
validation accuracies and the members' disagreement on SFT's and the policy's answers (rm_std_sft, rm_std_policy,
rm_uncertainty_rise). Writes the `reward_ensemble` section of the JSON file."""
import argparse
import tempfile
import time
from pathlib import Path

from bench import machine, pipeline
from rlhf import config
from rlhf.io import read_json, write_json
from rlhf.paths import layout

REPO = Path(__file__).resolve().parents[1]
INPUTS = ("tokenized", "base", "sft", "policy")
QUICK = {"data.builtin.num_pairs": 200, "model.tiny.vocab_size": 300, "model.tiny.hidden_size": 32,
         "model.tiny.intermediate_size": 64, "model.pretrain.max_steps": 30, "method": "dpo", "eval.num_prompts": 32,
         **{f"{s}.{k}": v for s in ("sft", "reward", "dpo") for k, v in
            {"max_steps": 4, "eval_steps": 4, "save_steps": 4, "logging_steps": 1}.items()}}
QUICK_STAGES = ("fetch", "prepare", "base", "tokenize", "sft", "reward", "reference", "align")


def scratch_project(root: Path) -> Path:
    """The stages that make the inputs, on QUICK settings, in `root`."""
    root.mkdir()
    config.write_with_overrides(REPO / "params.yaml", root / "params.yaml", QUICK)
    stages = pipeline.stages(REPO)
    for name in QUICK_STAGES:  # the reward model here is only an input of align; the measurement trains its own
        pipeline.timed(stages[name]["cmd"], root, root / f"{name}.log", pythonpath=REPO)
    return root


def scoring_seconds(work: Path, size: int, answers: int, repeats: int = 3) -> dict:
    """Seconds to score the same `answers` SFT answers by member 0 alone and by all `size` members (best of
    `repeats`), on the ensemble loaded once."""
    import torch

    from rlhf import base, models, scoring, tokenize

    paths, params = layout().under(work), config.load(work / "params.yaml")
    model, stats = models.reward_model(paths.base, paths.sft, paths.reward, params.model)
    tokenizer = models.tokenizer(paths.base)
    prompts = tokenize.load_split(paths.tokenized, "validation", 10**9)["prompt_ids"][:answers]
    from datasets import load_from_disk

    replies = [list(a) for a in load_from_disk(str(paths.sft_answers))["answers"]["answer_ids"][:answers]]
    seconds = {}
    for k, members in ((1, stats[:1]), (size, stats)):
        score = scoring.reward_function(model, members, tokenizer, base.end_of_turn(tokenizer), params.eval.batch_size)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.no_grad():
                score(prompts[: len(replies)], replies)
            runs.append(time.perf_counter() - start)
        seconds[k] = round(min(runs), 4)
    return {"answers_scored": len(replies), "k1_seconds": seconds[1], f"k{size}_seconds": seconds[size],
            "k_over_k1_ratio": round(seconds[size] / seconds[1], 2),
            "head_bytes": int(model.config.hidden_size * torch.finfo(model.dtype).bits // 8)}


def run(project: Path, work: Path, size: int, overrides: dict) -> dict:
    paths, stages = layout(), pipeline.stages(REPO)
    # this checkout's params (the project's predate reward.ensemble), on the project's inputs made with the defaults
    config.write_with_overrides(REPO / "params.yaml", work / "params.yaml", overrides | {"reward.ensemble.members": size})
    for name in INPUTS:  # links, so that the project's own outputs stay untouched
        link = work / getattr(paths, name)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((project / getattr(paths, name)).resolve())
    train = pipeline.timed(stages["reward"]["cmd"], work, work / "reward.log", pythonpath=REPO)
    metrics = read_json(work / paths.reward_metrics)
    adapters = [f.stat().st_size for f in sorted((work / paths.reward).glob("member-*/adapter_model.safetensors"))]
    evaluation = {name: pipeline.timed(stages[name]["cmd"], work, work / f"{name}.log", pythonpath=REPO)
                  for name in ("sft_answers", "evaluate")}
    scores = scoring_seconds(work, size, answers=config.load(work / "params.yaml").eval.num_prompts or 500)
    eval_metrics = read_json(work / paths.eval_metrics)
    return {"size": size, "reward_stage": train, "train_seconds_per_member": round(metrics["train_seconds"] / size, 2),
            "steps_per_member": metrics["steps"], "adapter_bytes_per_member": adapters[0], "scoring": scores,
            "member_accuracy": [metrics[f"member_{i}_accuracy"] for i in range(size)],
            "ensemble_accuracy": metrics["ensemble_accuracy"],
            **{k: eval_metrics[k] for k in ("rm_std_sft", "rm_std_policy", "rm_uncertainty_rise", "rm_win_rate",
                                            "oracle_win_rate", "kl_policy_sft") if k in eval_metrics},
            "sft_answers": evaluation["sft_answers"], "evaluate": evaluation["evaluate"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a folder where the default `dvc repro` has run")
    parser.add_argument("--quick", action="store_true", help="a scratch project on tiny settings (figures mean little)")
    parser.add_argument("--size", type=int, default=4, help="ensemble members (reward.ensemble.members)")
    parser.add_argument("--steps", type=int, help="optimizer steps per member (reward.max_steps; default: the params')")
    parser.add_argument("--prompts", type=int, help="evaluation prompts (eval.num_prompts; default: the params')")
    parser.add_argument("--max-wait", type=float, default=machine.MAX_WAIT_SECONDS,
                        help="seconds each measurement waits for a quiet machine")
    parser.add_argument("--out", type=Path, default=REPO / "metrics/bench.json")
    args = parser.parse_args()
    machine.MAX_WAIT_SECONDS = 0 if args.quick else args.max_wait  # --quick: a check that it runs, no waiting
    if not (args.project or args.quick):
        parser.error("give --project (a folder where the default `dvc repro` has run) or --quick")
    with tempfile.TemporaryDirectory() as tmp:
        project = args.project or scratch_project(Path(tmp) / "project")
        (Path(tmp) / "measure").mkdir()
        overrides = (QUICK if args.quick else {}) | ({"reward.max_steps": args.steps} if args.steps else {}) | (
            {"eval.num_prompts": args.prompts} if args.prompts else {})
        section = run(project, Path(tmp) / "measure", args.size, overrides)
    section["inputs"] = "the outputs of a default `dvc repro` (--project)" if args.project else "quick: tiny scratch project"
    section["overrides"] = overrides
    report = read_json(args.out) if args.out.is_file() else {}
    report["reward_ensemble"] = {**section, "quick": args.quick, **machine.stamp()}
    write_json(args.out, report)
    print(section)


if __name__ == "__main__":
    main()
