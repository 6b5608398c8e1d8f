"""sft_answers: the SFT model's side of the evaluation, once per SFT model and eval settings (rlhf/sft_answers.py).

    python -m stages.sft_answers --tokenized data/tokenized --base models/base --sft models/sft \
        --reward models/reward --out data/sft_answers

Writes OUT as a datasets DatasetDict: `answers` (per evaluation prompt: the SFT model's sampled answer ids, its
reward-model score and, on a built-in task, oracle score) and `pairs` (per validation pair: the SFT model's summed
log-probs and token counts of the chosen and rejected answers), each row with its validation id, and
OUT/sft_answers.json (provenance). The evaluate stage reads it instead of sampling and scoring the SFT model again.
"""
import argparse
from pathlib import Path

from rlhf import config, sft_answers
from rlhf.io import atomic_dir, provenance, run, write_json


def main():
    parser = argparse.ArgumentParser(description="The SFT model's answers and scores for the evaluate stage.")
    parser.add_argument("--tokenized", required=True, help="the tokenize stage's output folder")
    parser.add_argument("--base", required=True, help="the base stage's output folder")
    parser.add_argument("--sft", required=True, help="the sft stage's output folder")
    parser.add_argument("--reward", required=True, help="the reward stage's output folder")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args()
    params = config.load()
    settings = {k: getattr(params.eval, k) for k in ("num_prompts", "max_new_tokens", "temperature", "top_p",
                                                      "batch_size")}

    splits = sft_answers.run(params, args.tokenized, args.base, args.sft, args.reward)
    with atomic_dir(args.out) as tmp:
        splits.save_to_disk(str(tmp))
        write_json(Path(tmp) / "sft_answers.json", provenance(seed=params.seed, source=params.data.source,
                                                              model=params.model, eval=settings))
    print(f"sft_answers: {len(splits['answers'])} answers, {len(splits['pairs'])} validation pairs")


if __name__ == "__main__":
    run(main)
