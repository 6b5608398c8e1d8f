"""tokenize: apply the chat template and tokenize both splits, once, for every training stage (rlhf/tokenize.py).

    python -m stages.tokenize --prepared data/prepared --base models/base --out data/tokenized \
        --metrics metrics/tokenize.json

Run it with `python -m`: as a plain script its name would shadow Python's own `tokenize` module.
Writes OUT as a datasets DatasetDict (train, validation) saved to disk, OUT/manifest.json (rows and id hash per
split) and metrics/tokenize.json (truncations, drops, lengths).
"""
import argparse
from pathlib import Path

from datasets import Dataset, DatasetDict

from rlhf import base, config, tokenize
from rlhf.io import UserError, atomic_dir, provenance, read_jsonl, run, write_json


def main():
    parser = argparse.ArgumentParser(description="Tokenize the prepared splits.")
    parser.add_argument("--prepared", required=True, help="the prepare stage's output folder")
    parser.add_argument("--base", required=True, help="the base stage's output folder (holds the tokenizer)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    args = parser.parse_args()
    params = config.load()
    tokenizer = base.load_tokenizer(args.base)

    splits, metrics, manifest = {}, {}, {}
    for split in ("train", "validation"):
        rows = read_jsonl(Path(args.prepared) / f"{split}.jsonl")
        examples, counts = tokenize.tokenize_split(rows, tokenizer, params.tokenize)
        if split == "validation":  # longest first in tokens, as prepare did in characters
            examples.sort(key=tokenize.total_length, reverse=True)
        if not examples:
            raise UserError(f"tokenize: every {split} row was dropped ({dict(counts)}); raise the "
                                     "tokenize.max_* limits or set tokenize.overlong: truncate.")
        splits[split] = Dataset.from_list(examples)
        lengths = [tokenize.total_length(e) for e in examples]
        metrics[split] = {"rows_in": len(rows), "rows_out": len(examples), **counts,
                          "max_length": max(lengths), "mean_length": round(sum(lengths) / len(lengths), 2)}
        manifest[split] = {"rows": len(examples), "ids_sha256": tokenize.ids_hash([e["id"] for e in examples]),
                           "max_length": max(lengths)}
    with atomic_dir(args.out) as tmp:
        DatasetDict(splits).save_to_disk(str(tmp))
        # Versions but not params: the params are in dvc.lock, and a limit change that leaves every row as it was must
        # not change this output's hash, or DVC would retrain every stage after it for nothing.
        write_json(tmp / tokenize.MANIFEST, {**manifest, "versions": provenance()["versions"]})
    write_json(args.metrics, metrics)
    print(f"tokenize: {metrics}")


if __name__ == "__main__":
    run(main)
