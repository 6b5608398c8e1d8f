"""prepare: filter the fetched rows and split them into train and validation (see rlhf/prepare.py).

    python -m stages.prepare --fetched data/fetched --out data/prepared --metrics metrics/data.json

Writes OUT/train.jsonl (seeded random order) and OUT/validation.jsonl (longest first), and metrics/data.json: every
row that left the pipeline so far, counted by reason, the split sizes, and the distinct prompts per split with
`validation_prompts_in_train` (0 unless prepare.split_by is row).
"""
import argparse
from pathlib import Path

from rlhf import config, prepare, stream
from rlhf.io import atomic_dir, read_json, run, write_json


def main():
    parser = argparse.ArgumentParser(description="Filter and split the fetched rows.")
    parser.add_argument("--fetched", required=True, help="the fetch stage's output folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    args = parser.parse_args()
    params = config.load()

    fetched = Path(args.fetched)
    try:
        with atomic_dir(args.out) as tmp:
            rows, dropped, train, validation, prompts = prepare.prepare(
                fetched / "rows.jsonl", tmp, params.prepare, params.seed, stream.workers(params.processing.num_proc),
                params.processing.batch_size)
            metrics = prepare.account(read_json(fetched / "fetch.json"), rows, dropped, train, validation, prompts)
    except prepare.NothingLeft as err:  # no output, but the metrics show where every row went
        write_json(args.metrics, prepare.account(read_json(fetched / "fetch.json"), err.rows, err.dropped, 0, 0,
                                                   prepare.prompt_counts([], [], [])))
        raise
    write_json(args.metrics, metrics)
    print(f"prepare: {rows} rows -> {train} train, {validation} validation (split by {params.prepare.split_by}); "
          f"{prompts}; {dropped}")


if __name__ == "__main__":
    run(main)
