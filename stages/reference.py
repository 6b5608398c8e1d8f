"""reference: the SFT model's log-probs of every tokenized pair, once (rlhf/reference.py).

    python -m stages.reference

Writes `reference`: DPO's reference log-probs of both splits, in the row order of `tokenized`, with a manifest.

Reads and writes the paths in paths.yaml; give any of them another place on the command line (`--help` lists them).
"""
from rlhf import config, paths, reference
from rlhf.io import run


def main():
    reference.run(config.load(), paths.from_command_line(__doc__))


if __name__ == "__main__":
    run(main)
