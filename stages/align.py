"""align: align the SFT model with the method named by `method` in params.yaml (rlhf/align.py).

    python -m stages.align

Writes `policy`: the policy's LoRA adapter, the tokenizer and align.json (method, starting point, provenance), and
`align_metrics`: the method's own training metrics and, on a built-in task, the mean oracle reward of SFT and policy
samples on validation prompts. Curves go to `align_live`; a killed run resumes from `align_checkpoints`.

Reads and writes the paths in paths.yaml; give any of them another place on the command line (`--help` lists them).
"""
from rlhf import config, paths, align
from rlhf.io import run


def main():
    align.run(config.load(), paths.from_command_line(__doc__))


if __name__ == "__main__":
    run(main)
