"""align: align the SFT model with the method named by `method` in params.yaml (see rlhf/align.py).

    python -m stages.align --tokenized data/tokenized --base models/base --sft models/sft --reward models/reward \
        --reference data/reference --out models/policy --metrics metrics/align.json --live dvclive/align \
        --checkpoints checkpoints/align

OUT holds the policy's LoRA adapter, the tokenizer and align.json (method, starting point, provenance).
metrics/align.json has the method's own training metrics and, on a built-in task, the mean oracle reward of SFT and
policy samples on validation prompts.
"""
import argparse

from rlhf import align, config, launch, models, resuming, train
from rlhf.io import provenance, run, write_json


def main():
    parser = argparse.ArgumentParser(description="Align the SFT model with the chosen method.")
    parser.add_argument("--tokenized", required=True, help="the tokenize stage's output folder")
    parser.add_argument("--base", required=True, help="the base stage's output folder")
    parser.add_argument("--sft", required=True, help="the sft stage's output folder")
    parser.add_argument("--reward", required=True, help="the reward stage's output folder (used by ppo and grpo)")
    parser.add_argument("--reference", required=True, help="the reference stage's output folder (used by dpo)")
    parser.add_argument("--out", required=True, help="output folder for the policy adapter")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    parser.add_argument("--live", required=True, help="DVCLive folder for training curves")
    parser.add_argument("--checkpoints", required=True, help="scratch folder for training checkpoints")
    args = parser.parse_args()
    params = config.load()
    run_method = align.method_runner(params.method)
    align.check_processes(params)
    align.check_checkpointing(params)
    if launch.relaunch(params.compute, "stages.align"):
        return

    with launch.stage_output(args.out) as tmp:
        metrics, model = run_method(params, args.tokenized, args.base, args.sft, args.reward, args.reference, tmp,
                                    args.checkpoints, args.live)
        if launch.is_main_process():
            metrics.update(align.oracle_check(params, args.tokenized, args.base, args.sft, model))
            starts_from = "sft" if models.starts_from_sft(params.method, params.orpo.init) else "base"
            section = getattr(params, params.method)
            write_json(tmp / align.INFO_FILE, {"method": params.method, "starts_from": starts_from, **provenance(
                seed=params.seed, model=params.model, lora=params.lora, compute=params.compute,
                **{params.method: section})})
    if not launch.is_main_process():
        return
    write_json(args.metrics, {"method": params.method, **train.model_settings(params), **metrics})
    print(f"align ({params.method}): {metrics}")
    resuming.discard_checkpoints(args.checkpoints)  # only a run that died resumes


if __name__ == "__main__":
    run(main)
