"""export: merge base + SFT + policy adapters into one model folder that plain transformers loads, with a
model card; for a policy that failed eval.gate, only the card, or a refusal (export.on_failed_gate, rlhf/export.py).

    python -m stages.export

Writes `export`: safetensors weights in export.dtype, the tokenizer with its chat template, a generation config
that stops at the template's end of turn, and README.md, the model card, written from recorded facts.

Reads and writes the paths in paths.yaml; give any of them another place on the command line (`--help` lists them).
"""
from rlhf import config, paths, export
from rlhf.io import run


def main():
    export.run(config.load(), paths.from_command_line(__doc__))


if __name__ == "__main__":
    run(main)
