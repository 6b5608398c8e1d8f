"""LoRA against QLoRA (4-bit NF4) on the Qwen2-0.5B-shaped model, on this machine: peak memory and seconds per step
of our SFT (rlhf.sft.run_sft, as the stage calls it), both measured in the same run, and their ratios. Not part of
the test suite, and not part of `bench.run` (4-bit layers are slow on a CPU: run it on its own).

    python -m bench.qlora [--out metrics/bench.json] [--steps 4] [--batch 2] [--quick]

The model folder and its project (fetch, prepare, base, tokenize) are made as bench/qwen.py makes them, from this
working tree. Each training runs in a fresh process once the machine is quiet (bench/machine.py), so its peak RSS is
its own; `other_cpu_share` says how much other work ran meanwhile.
"""
import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path

from bench import machine, pipeline, qwen, trainers
from rlhf import config, models
from rlhf.io import provenance, write_json

REPO = Path(__file__).resolve().parents[1]
# (model.dtype, model.quantization): the same compute dtype on both sides, so the ratio is the 4-bit weights' alone.
VARIANTS = {"lora": ("float32", "none"), "qlora_4bit": ("float32", "4bit")}


def load_only(base_dir: Path, cfg) -> dict:
    """The model as the stages load it, and nothing else: its own footprint (weights and buffers), and this process's
    resident memory after loading and at its peak while loading (the peak of a training run includes this)."""
    from rlhf import train

    model = models.base_model(base_dir, cfg)
    status = Path("/proc/self/status").read_text().split()
    return {"model_footprint_mib": round(model.get_memory_footprint() / 2**20, 1),
            "rss_after_loading_mib": round(int(status[status.index("VmRSS:") + 1]) / 1024, 1)}


def tokenizer_project(work: Path, stages: dict) -> Path:
    """A builtin:tiny project up to the base stage (no pretraining): its tokenizer goes with the Qwen-shaped model."""
    root = work / "tiny-project"
    root.mkdir()
    config.write_with_overrides(REPO / "params.yaml", root / "params.yaml", {**qwen.SETTINGS,
                                                                              "model.pretrain.max_steps": 0})
    for name in ("fetch", "prepare", "base"):
        pipeline.timed(stages[name]["cmd"], root, root / f"{name}.log", pythonpath=REPO)
    return root / pipeline.first_out(stages["base"])


def run(work: Path, quick: bool, steps: int, batch: int) -> dict:
    stages = pipeline.stages(REPO)
    shape = qwen.QUICK_SHAPE if quick else qwen.QWEN2_0_5B
    folder = work / "qwen2-0.5b-shaped"
    made = trainers.isolated(qwen.make_model, folder, tokenizer_project(work, stages), shape)
    root = work / "qwen-project"
    root.mkdir()
    config.write_with_overrides(REPO / "params.yaml", root / "params.yaml", {**qwen.SETTINGS, "model.name": str(folder)})
    for name in qwen.SETUP_STAGES:
        pipeline.timed(stages[name]["cmd"], root, root / f"{name}.log", pythonpath=REPO)
    params = trainers.with_steps(config.load(root / "params.yaml"), "sft", steps, batch)
    tokenized, base_dir = root / pipeline.first_out(stages["tokenize"]), root / pipeline.first_out(stages["base"])
    results = {}
    for name, (dtype, quantization) in VARIANTS.items():
        model = dataclasses.replace(params.model, dtype=dtype, quantization=quantization)
        loading = trainers.isolated(load_only, base_dir, model)
        trained = trainers.isolated(trainers.ours_sft, dataclasses.replace(params, model=model), tokenized, base_dir,
                                    work)
        trained.pop("adapter")
        results[name] = {**trained, "seconds_per_step": round(trained["train_seconds"] / trained["steps"], 2),
                         "loading_only": loading}
    lora, qlora = results["lora"], results["qlora_4bit"]
    return {"shape": "a reduced shape (--quick)" if quick else "Qwen2-0.5B", "model": made, "steps": steps,
            "per_device_train_batch_size": batch, "variants": {k: dict(zip(("dtype", "quantization"), v))
                                                               for k, v in VARIANTS.items()},
            **results, "qlora_over_lora_peak_rss_ratio": round(qlora["peak_rss_mib"] / lora["peak_rss_mib"], 3),
            "qlora_over_lora_model_footprint_ratio": round(qlora["loading_only"]["model_footprint_mib"]
                                                           / lora["loading_only"]["model_footprint_mib"], 3),
            "qlora_over_lora_seconds_per_step_ratio": round(qlora["seconds_per_step"] / lora["seconds_per_step"], 3)}


def main():
    parser = argparse.ArgumentParser(description="LoRA vs QLoRA 4-bit on the Qwen2-0.5B shape; writes one JSON file.")
    parser.add_argument("--quick", action="store_true", help="a 2-layer body of width 64: a check that it runs")
    parser.add_argument("--out", type=Path, default=Path("metrics/bench.json"), help="JSON file: section `qlora`")
    parser.add_argument("--steps", type=int, default=4, help="SFT steps of each run")
    parser.add_argument("--batch", type=int, default=2, help="per-device batch size")
    args = parser.parse_args()
    os.environ.update(pipeline.ENV)
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-qlora-") as tmp:
        section = run(Path(tmp), args.quick, args.steps, args.batch)
    report["qlora"] = {**section, "quick": args.quick, **machine.stamp(), "versions": provenance()["versions"]}
    write_json(args.out, report)
    print(json.dumps(report["qlora"], indent=2))


if __name__ == "__main__":
    main()
