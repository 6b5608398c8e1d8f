"""sft: supervised fine-tuning of the base model on prompt + chosen, with LoRA (rlhf/sft.py).

    python -m stages.sft

Writes `sft`: the LoRA adapter, the tokenizer and sft.json (the settings the preset chose, provenance), and
`sft_metrics`. Curves go to `sft_live`; a killed run resumes from `sft_checkpoints`. With compute.num_processes > 1
it relaunches itself through `accelerate launch`.

Reads and writes the paths in paths.yaml; give any of them another place on the command line (`--help` lists them).
"""
from rlhf import config, paths, sft
from rlhf.io import run


def main():
    sft.run(config.load(), paths.from_command_line(__doc__))


if __name__ == "__main__":
    run(main)
