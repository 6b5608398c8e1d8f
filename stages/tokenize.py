"""tokenize: apply the chat template and tokenize both splits, once, for every training stage (rlhf/tokenize.py).

    python -m stages.tokenize --prepared data/prepared --base models/base --out data/tokenized \
        --metrics metrics/tokenize.json

Run it with `python -m`: as a plain script its name would shadow Python's own `tokenize` module.
Writes OUT as a datasets DatasetDict (train, validation) on disk, OUT/manifest.json (rows and id hash per split) and
metrics/tokenize.json (truncations, drops, lengths, rows with control tokens in their text). Rows stream through in
batches (params.yaml `processing`).
"""
import argparse
import json
from pathlib import Path

from rlhf import config, models, stream, tokenize
from rlhf.io import atomic_dir, provenance, run, write_json


def main():
    parser = argparse.ArgumentParser(description="Tokenize the prepared splits.")
    parser.add_argument("--prepared", required=True, help="the prepare stage's output folder")
    parser.add_argument("--base", required=True, help="the base stage's output folder (holds the tokenizer)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    args = parser.parse_args()
    params = config.load()
    tokenizer = models.tokenizer(args.base)

    metrics, manifest = {}, {}
    with atomic_dir(args.out) as tmp:
        for split in ("train", "validation"):
            # validation longest first in tokens, as prepare sorted it in characters
            metrics[split], manifest[split] = tokenize.write_split(
                Path(args.prepared) / f"{split}.jsonl", tmp / split, tokenizer, params.tokenize,
                longest_first=split == "validation", num_proc=stream.workers(params.processing.num_proc),
                batch_size=params.processing.batch_size)
        (tmp / "dataset_dict.json").write_text(json.dumps({"splits": list(manifest)}))
        # Versions but not params: the params are in dvc.lock, and a limit change that leaves every row as it was must
        # not change this output's hash, or DVC would retrain every stage after it for nothing.
        write_json(tmp / tokenize.MANIFEST, {**manifest, "versions": provenance()["versions"]})
    write_json(args.metrics, metrics)
    print(f"tokenize: {metrics}")


if __name__ == "__main__":
    run(main)
