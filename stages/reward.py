"""reward: a Bradley-Terry reward model on the SFT model, with LoRA (rlhf/reward.py).

    python -m stages.reward

Writes `reward`: per ensemble member (`reward.ensemble.members`, 1 by default) a folder member-<i> with its adapter,
score head, tokenizer and reward_stats.json (validation score distribution, for normalizing rewards); ensemble.json
and reward.json; and `reward_metrics`. Curves (member 0's) go to `reward_live`; a killed run resumes from
`reward_checkpoints`, without training again the members it had finished.

Reads and writes the paths in paths.yaml; give any of them another place on the command line (`--help` lists them).
"""
from rlhf import config, paths, reward
from rlhf.io import run


def main():
    reward.run(config.load(), paths.from_command_line(__doc__))


if __name__ == "__main__":
    run(main)
