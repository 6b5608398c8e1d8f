"""tokenize: apply the chat template and tokenize both splits, once, for every training stage
(rlhf/tokenize.py).

    python -m stages.tokenize

Run it with `python -m`: as a plain script its name would shadow Python's own `tokenize` module.
Writes `tokenized` as a datasets DatasetDict (train, validation) on disk with its manifest (rows and id hash per
split), and `tokenize_metrics` (truncations, drops, lengths, rows with control tokens in their text). Rows stream
through in batches (`processing`).

Reads and writes the paths in paths.yaml; give any of them another place on the command line (`--help` lists them).
"""
from rlhf import config, paths, tokenize
from rlhf.io import run


def main():
    tokenize.run(config.load(), paths.from_command_line(__doc__))


if __name__ == "__main__":
    run(main)
