"""prepare: filter the fetched rows and split them into train and validation (see rlhf/prepare.py).

    python -m stages.prepare --fetched data/fetched --out data/prepared --metrics metrics/data.json

Writes OUT/train.jsonl (seeded random order) and OUT/validation.jsonl (longest first), and metrics/data.json: every
row that left the pipeline so far, counted by reason, and the split sizes.
"""
import argparse
from pathlib import Path

from rlhf import config, prepare
from rlhf.io import atomic_dir, read_json, read_jsonl, run, write_json, write_jsonl


def main():
    parser = argparse.ArgumentParser(description="Filter and split the fetched rows.")
    parser.add_argument("--fetched", required=True, help="the fetch stage's output folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    args = parser.parse_args()
    params = config.load()

    fetched = Path(args.fetched)
    rows, fetch_stats = read_jsonl(fetched / "rows.jsonl"), read_json(fetched / "fetch.json")
    kept, dropped = prepare.filter_rows(rows, params.prepare)
    train, validation = prepare.split(kept, params.prepare.validation_size, params.seed)

    metrics = prepare.account(fetch_stats, len(rows), dropped, len(train), len(validation))
    with atomic_dir(args.out) as tmp:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "validation.jsonl", validation)
    write_json(args.metrics, metrics)
    print(f"prepare: {len(rows)} rows -> {len(train)} train, {len(validation)} validation; {dropped}")


if __name__ == "__main__":
    run(main)
