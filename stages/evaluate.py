"""evaluate: the aligned policy against the SFT model on the validation split (rlhf/evaluate.py).

    python -m stages.evaluate

Writes `eval_metrics` (flat, numeric, stable keys for `dvc metrics diff`, and the gate), `samples` (prompt, both
answers, their scores: for a person to read) and the plot data in `eval_plots`: reward distributions of SFT and
policy, and the policy's point on the reward-against-KL frontier (compare experiments with `dvc plots diff`).

Reads and writes the paths in paths.yaml; give any of them another place on the command line (`--help` lists them).
"""
from rlhf import config, paths, evaluate
from rlhf.io import run


def main():
    evaluate.run(config.load(), paths.from_command_line(__doc__))


if __name__ == "__main__":
    run(main)
