"""prepare: filter the fetched rows and split them into train and validation (rlhf/prepare.py).

    python -m stages.prepare

Writes `prepared`: train.jsonl (seeded random order) and validation.jsonl (longest first), and `data_metrics`: every
row that left the pipeline so far, counted by reason, and the split sizes.

Reads and writes the paths in paths.yaml; give any of them another place on the command line (`--help` lists them).
"""
from rlhf import config, paths, prepare
from rlhf.io import run


def main():
    prepare.run(config.load(), paths.from_command_line(__doc__))


if __name__ == "__main__":
    run(main)
