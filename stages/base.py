"""base: build or resolve the model every training stage starts from, and its tokenizer (rlhf/base.py).

    python -m stages.base

Writes `base`: the tokenizer, base.json (what to load and what made it) and, for builtin:tiny, the weights.

Reads and writes the paths in paths.yaml; give any of them another place on the command line (`--help` lists them).
"""
from rlhf import base, config, paths
from rlhf.io import run


def main():
    base.run(config.load(), paths.from_command_line(__doc__))


if __name__ == "__main__":
    run(main)
