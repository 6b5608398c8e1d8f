"""base: build or resolve the model that every training stage starts from (see rlhf/base.py).

    python -m stages.base --prepared data/prepared --out models/base

For `model.name: builtin:tiny`, OUT holds the tokenizer and the pretrained tiny model. For a local folder or hub id,
OUT holds the tokenizer and base.json says where the weights are (they are not copied).
"""
import argparse
from pathlib import Path

from rlhf import base, config
from rlhf.io import atomic_dir, provenance, read_jsonl, run, write_json


def main():
    parser = argparse.ArgumentParser(description="Build or resolve the base model and tokenizer.")
    parser.add_argument("--prepared", required=True, help="the prepare stage's output folder (tokenizer training text)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args()
    params = config.load()

    with atomic_dir(args.out) as tmp:
        if params.model.name == "builtin:tiny":
            train = read_jsonl(Path(args.prepared) / "train.jsonl")
            stats = base.build_tiny(train, params.model, params.seed, tmp)
            weights = {"kind": "builtin", **stats}
        else:
            weights = base.resolve_pretrained(params.model, tmp)
        made_by = {k: getattr(params.model, k) for k in ("name", "revision", "tiny", "pretrain")}
        write_json(tmp / base.BASE_FILE, {"weights": weights, **provenance(seed=params.seed, model=made_by)})
    print(f"base: {params.model.name} -> {args.out} ({weights})")


if __name__ == "__main__":
    run(main)
