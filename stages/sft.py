"""sft: supervised fine-tuning of a LoRA adapter on prompt + chosen, loss on the completion (see rlhf/sft.py).

    python -m stages.sft --tokenized data/tokenized --base models/base --out models/sft --metrics metrics/sft.json \
        --live dvclive/sft --checkpoints checkpoints/sft

OUT holds the adapter (safetensors), the tokenizer and sft.json (provenance and the settings the preset chose).
Checkpoints go to CHECKPOINTS, outside the stage's outputs; curves to the DVCLive folder LIVE.
"""
import argparse

from rlhf import config, launch, resuming, sft
from rlhf.io import provenance, run, write_json


def main():
    parser = argparse.ArgumentParser(description="Supervised fine-tuning with LoRA.")
    parser.add_argument("--tokenized", required=True, help="the tokenize stage's output folder")
    parser.add_argument("--base", required=True, help="the base stage's output folder")
    parser.add_argument("--out", required=True, help="output folder for the adapter")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    parser.add_argument("--live", required=True, help="DVCLive folder for training curves")
    parser.add_argument("--checkpoints", required=True, help="scratch folder for training checkpoints")
    args = parser.parse_args()
    params = config.load()
    if launch.relaunch(params.compute, "stages.sft"):
        return

    with launch.stage_output(args.out) as tmp:
        metrics, settings, _ = sft.run_sft(params, args.tokenized, args.base, tmp, args.checkpoints, args.live)
        if launch.is_main_process():
            write_json(tmp / "sft.json", {"settings": settings, **provenance(
                seed=params.seed, model=params.model, lora=params.lora, compute=params.compute, sft=params.sft)})
    if not launch.is_main_process():
        return
    write_json(args.metrics, {**metrics, **settings})
    print(f"sft: {metrics}")
    resuming.discard_checkpoints(args.checkpoints)  # only a run that died resumes


if __name__ == "__main__":
    run(main)
