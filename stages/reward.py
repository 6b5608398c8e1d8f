"""reward: train a Bradley-Terry reward model on top of the SFT model (see rlhf/reward.py).

    python -m stages.reward --tokenized data/tokenized --base models/base --sft models/sft --out models/reward \
        --metrics metrics/reward.json --live dvclive/reward --checkpoints checkpoints/reward

OUT holds the reward adapter with its score head, the tokenizer, and reward_stats.json (validation accuracy, margin,
score mean and std, which later stages use to normalize rewards).
"""
import argparse

from rlhf import config, launch, resuming, reward
from rlhf.io import provenance, run, write_json


def main():
    parser = argparse.ArgumentParser(description="Reward model training.")
    parser.add_argument("--tokenized", required=True, help="the tokenize stage's output folder")
    parser.add_argument("--base", required=True, help="the base stage's output folder")
    parser.add_argument("--sft", required=True, help="the sft stage's output folder")
    parser.add_argument("--out", required=True, help="output folder for the reward adapter")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    parser.add_argument("--live", required=True, help="DVCLive folder for training curves")
    parser.add_argument("--checkpoints", required=True, help="scratch folder for training checkpoints")
    args = parser.parse_args()
    params = config.load()
    if launch.relaunch(params.compute, "stages.reward"):
        return

    with launch.stage_output(args.out) as tmp:
        metrics, settings, _ = reward.run_reward(params, args.tokenized, args.base, args.sft, tmp, args.checkpoints,
                                                 args.live)
        if launch.is_main_process():
            write_json(tmp / "reward.json", {"settings": settings, **provenance(
                seed=params.seed, model=params.model, lora=params.lora, compute=params.compute, reward=params.reward)})
    if not launch.is_main_process():
        return
    write_json(args.metrics, {**metrics, **settings})
    print(f"reward: {metrics}")
    resuming.discard_checkpoints(args.checkpoints)  # only a run that died resumes


if __name__ == "__main__":
    run(main)
