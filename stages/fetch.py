"""fetch: read `data.source` into canonical preference rows (rlhf/fetch.py).

    python -m stages.fetch

Writes `fetched`: rows.jsonl and fetch.json (counts of rows read, sampled out and skipped, with reasons, and where
the data came from). The prepare stage folds those counts into `data_metrics`. Rows stream through in batches
(params.yaml `processing`), so memory does not grow with the data.

Reads and writes the paths in paths.yaml; give any of them another place on the command line (`--help` lists them).
"""
from rlhf import config, fetch, paths
from rlhf.io import run


def main():
    fetch.run(config.load(), paths.from_command_line(__doc__))


if __name__ == "__main__":
    run(main)
