"""export: merge base + SFT + policy adapters into one model folder that plain transformers loads, with a model card;
refuses a policy that failed eval.gate (see rlhf/export.py).

    python -m stages.export --base models/base --sft models/sft --policy models/policy --eval metrics/eval.json \
        --out models/export

OUT holds safetensors weights in export.dtype, the tokenizer with its chat template, a generation config that stops
at the template's end of turn, and README.md: the model card, written from recorded facts.
"""
import argparse

from rlhf import config, export
from rlhf.io import atomic_dir, run


def main():
    parser = argparse.ArgumentParser(description="Export the aligned policy as one plain transformers model.")
    parser.add_argument("--base", required=True, help="the base stage's output folder")
    parser.add_argument("--sft", required=True, help="the sft stage's output folder")
    parser.add_argument("--policy", required=True, help="the align stage's output folder")
    parser.add_argument("--eval", required=True, help="the evaluate stage's metrics file (with the gate result)")
    parser.add_argument("--out", required=True, help="output folder for the exported model")
    args = parser.parse_args()
    params = config.load()

    with atomic_dir(args.out) as tmp:
        facts = export.run(params, args.base, args.sft, args.policy, args.eval, tmp)
    if facts is None:
        print(f"export: export.enabled is false; {args.out} holds only a note")
    else:
        print(f"export: {args.out} ({facts['method']}, {facts['model']['export_dtype']}, gate "
              f"{'FAILED, exported anyway (export.ignore_gate)' if facts['gate_ignored'] else 'passed'})")


if __name__ == "__main__":
    run(main)
