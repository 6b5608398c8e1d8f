"""sft_answers: the SFT model's side of the evaluation, once per SFT model and `eval.*` settings
(rlhf/sft_answers.py).

    python -m stages.sft_answers

Writes `sft_answers`: the SFT model's answers to the evaluation prompts with their scores, and its log-probs of
the validation pairs. The evaluate stage reads them.

Reads and writes the paths in paths.yaml; give any of them another place on the command line (`--help` lists them).
"""
from rlhf import config, paths, sft_answers
from rlhf.io import run


def main():
    sft_answers.run(config.load(), paths.from_command_line(__doc__))


if __name__ == "__main__":
    run(main)
