"""reference: the SFT model's log-probs of every train and validation pair, once (see rlhf/reference.py).

    python -m stages.reference --tokenized data/tokenized --base models/base --sft models/sft --out data/reference

Writes OUT as a datasets DatasetDict (train, validation; columns id, ref_chosen_logps, ref_rejected_logps in
data/tokenized's row order) and OUT/manifest.json (rows and ids hash per split, provenance). DPO's align run reads
these columns instead of running the reference model in every step.
"""
import argparse

from rlhf import config, reference
from rlhf.io import atomic_dir, provenance, run, write_json


def main():
    parser = argparse.ArgumentParser(description="Reference log-probs of every tokenized pair under the SFT model.")
    parser.add_argument("--tokenized", required=True, help="the tokenize stage's output folder")
    parser.add_argument("--base", required=True, help="the base stage's output folder")
    parser.add_argument("--sft", required=True, help="the sft stage's output folder")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args()
    params = config.load()

    splits, manifest = reference.compute(params, args.tokenized, args.base, args.sft)
    with atomic_dir(args.out) as tmp:
        splits.save_to_disk(str(tmp))
        write_json(tmp / reference.MANIFEST, {**manifest, **provenance(model=params.model,
                                                                        reference=params.reference)})
    print(f"reference: {manifest}")


if __name__ == "__main__":
    run(main)
