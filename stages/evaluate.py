"""evaluate: the aligned policy against the SFT model on the validation split (see rlhf/evaluate.py).

    python -m stages.evaluate --tokenized data/tokenized --base models/base --sft models/sft \
        --reward models/reward --policy models/policy --sft-answers data/sft_answers --metrics metrics/eval.json \
        --samples metrics/samples.jsonl --plots metrics/plots

Writes metrics/eval.json (flat, numeric, stable keys for `dvc metrics diff`), a samples file a person can read
(prompt, both answers, their scores), and the plot data: reward distributions of SFT vs policy, and the policy's
point on the reward-against-KL frontier (compare experiments with `dvc plots diff`).
"""
import argparse
from pathlib import Path

from rlhf import config, evaluate
from rlhf.io import run, write_json, write_jsonl


def main():
    parser = argparse.ArgumentParser(description="Evaluate the aligned policy against the SFT model.")
    parser.add_argument("--tokenized", required=True, help="the tokenize stage's output folder")
    parser.add_argument("--base", required=True, help="the base stage's output folder")
    parser.add_argument("--sft", required=True, help="the sft stage's output folder")
    parser.add_argument("--reward", required=True, help="the reward stage's output folder")
    parser.add_argument("--policy", required=True, help="the align stage's output folder")
    parser.add_argument("--sft-answers", required=True, help="the sft_answers stage's output folder")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    parser.add_argument("--samples", required=True, help="JSON-lines file of readable samples")
    parser.add_argument("--plots", required=True, help="folder for plot data")
    args = parser.parse_args()
    params = config.load()

    metrics, samples, plots = evaluate.run(params, args.tokenized, args.base, args.sft, args.reward, args.policy,
                                           args.sft_answers)
    for name, rows in plots.items():
        write_json(Path(args.plots) / f"{name}.json", rows)
    tmp = Path(args.samples).with_suffix(".tmp-jsonl")
    write_jsonl(tmp, samples)
    tmp.replace(args.samples)
    write_json(args.metrics, metrics)
    print(f"evaluate ({params.method}): {metrics}")


if __name__ == "__main__":
    run(main)
