"""fetch: read `data.source` into canonical preference rows (see rlhf/fetch.py).

    python -m stages.fetch --out data/fetched

Writes OUT/rows.jsonl and OUT/fetch.json (counts of rows read, sampled out and skipped, with reasons, and where the
data came from). The prepare stage folds those counts into metrics/data.json. Rows stream through in batches
(params.yaml `processing`), so memory does not grow with the data.
"""
import argparse

from rlhf import config, fetch, stream
from rlhf.io import atomic_dir, provenance, run, write_json


def main():
    parser = argparse.ArgumentParser(description="Read data.source into canonical preference rows.")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args()
    params = config.load()

    with atomic_dir(args.out) as tmp:
        lines, stats = fetch.fetch(params.data, params.seed, stream.workers(params.processing.num_proc),
                                   params.processing.batch_size)
        with open(tmp / "rows.jsonl", "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        if not stats["rows_fetched"]:
            raise fetch.DataError(f"data.source = {params.data.source!r} gave no usable rows: {stats}. Check the "
                                  "source and data.sample_ratio / data.max_rows.")
        # No params here: dvc.lock records them, and a param change that leaves the rows as they were must not
        # change this output's hash and so rerun every stage after it.
        write_json(tmp / "fetch.json", {**stats, "versions": provenance()["versions"]})
    print(f"fetch: {stats['rows_fetched']} rows from {params.data.source} -> {args.out}")


if __name__ == "__main__":
    run(main)
