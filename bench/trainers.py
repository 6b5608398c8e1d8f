"""Ours against plain TRL, SFT and DPO, on the same model, rows and settings; steps per second of trainer.train().

Ours: rlhf.sft.run_sft and rlhf.methods.dpo.run, called as the stages call them (DVCLive and checkpoints included);
our DPO reads the reference log-probs that the reference stage computes once (here: in its process, before training),
so its steps run no reference forward pass, where plain TRL's DPO runs one in every step.
Plain TRL: a script the way TRL's docs show one, on the same rows as text (the prepare stage's conversations,
which TRL tokenizes itself), with the same LoRA, batch size, steps, learning rate, schedule, max_length and dtype.
Each training runs in a fresh process: its peak RSS is its own, and no run warms caches for the next.
"""
import dataclasses
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from bench import machine
from rlhf import models, train
from rlhf.io import read_jsonl
from rlhf.paths import layout


def isolated(fn, *args) -> dict:
    """fn(*args) in a fresh (spawned) process, once the machine is quiet; its result with the process's peak RSS and
    the share of the cores that other processes used meanwhile."""
    watch = machine.Watch()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(_measured, fn, *args).result()
    return result | watch.report()


def _measured(fn, *args) -> dict:
    result = fn(*args)
    # VmHWM, not ru_maxrss: the latter also counts the parent's RSS, which a forked child holds until it execs.
    status = Path("/proc/self/status").read_text().split()
    result["peak_rss_mib"] = round(int(status[status.index("VmHWM:") + 1]) / 1024, 1)  # kB
    if torch.cuda.is_available():
        result["peak_gpu_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def with_steps(params, name: str, steps: int, batch: int | None = None):
    """`params` with section `name` stopping after `steps`, evaluating and saving once, at the end (which our
    trainers always do: both sides get the same); optionally another per-device batch size."""
    fields = {"max_steps": steps, "eval_steps": steps, "save_steps": steps}
    if batch:
        fields |= {"per_device_train_batch_size": batch, "gradient_accumulation_steps": 1}
    return dataclasses.replace(params, **{name: dataclasses.replace(getattr(params, name), **fields)})


def fresh(work: Path, name: str) -> Path:
    """A new folder per run: our stages resume from checkpoints they find, which would skip the training."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))


# -- ours -------------------------------------------------------------------------------------------------------------
def ours_sft(params, tokenized: Path, base_dir: Path, work: Path) -> dict:
    from rlhf import sft

    run = fresh(work, "ours-sft")
    paths = layout().replace(tokenized=tokenized, base=base_dir, sft_checkpoints=run / "checkpoints",
                             sft_live=run / "live")
    metrics, _, _ = sft.train_sft(params, paths, run / "out")
    return {"steps": metrics["steps"], "train_seconds": metrics["train_seconds"],
            "tokens_seen": metrics.get("tokens_seen"), "adapter": str(run / "out")}


def ours_dpo(params, tokenized: Path, base_dir: Path, sft_dir: Path, work: Path) -> dict:
    """Our reference stage's pass (timed apart: a sweep pays it once), then our DPO on its log-probs."""
    from rlhf import reference
    from rlhf.methods import dpo

    run = fresh(work, "ours-dpo")
    paths = layout().replace(tokenized=tokenized, base=base_dir, sft=sft_dir, reward=run / "reward",
                             reference=run / "reference", align_checkpoints=run / "checkpoints",
                             align_live=run / "live")
    start = time.perf_counter()
    splits, _ = reference.compute(params, paths)
    splits.save_to_disk(str(paths.reference))
    reference_seconds = time.perf_counter() - start
    metrics, _ = dpo.run(params, paths, run / "out")
    return {"steps": metrics["steps"], "train_seconds": metrics["train_seconds"],
            "reference_seconds": round(reference_seconds, 2),
            "tokens_seen": int(metrics.get("tokens_seen", metrics.get("num_input_tokens_seen", 0)))}


# -- plain TRL --------------------------------------------------------------------------------------------------------
def plain_config(params, section, work: Path, **extra) -> dict:
    """The shared settings spelled out as a TRL user writes them, with the values our params resolve to.
    Activation checkpointing is off, as ours has it (TRL's default turns it on and costs time)."""
    dtype = models.torch_dtype(params.model)
    return {
        "output_dir": str(work), "seed": params.seed, "report_to": "none", "max_steps": section.max_steps,
        "per_device_train_batch_size": section.per_device_train_batch_size,
        "per_device_eval_batch_size": section.per_device_train_batch_size,
        "gradient_accumulation_steps": section.gradient_accumulation_steps, "learning_rate": section.learning_rate,
        "lr_scheduler_type": section.lr_scheduler_type, "warmup_steps": section.warmup_steps,
        "weight_decay": section.weight_decay, "max_grad_norm": section.max_grad_norm, "max_length": section.max_length,
        "logging_steps": section.logging_steps, "eval_strategy": "steps", "eval_steps": section.eval_steps,
        "save_strategy": "steps", "save_steps": section.save_steps, "activation_checkpointing": False,
        "bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16, "use_cpu": not torch.cuda.is_available(),
        "include_num_input_tokens_seen": "non_padding", **extra,  # real tokens, as ours counts them
    }


def plain_model(model_dir: Path, cfg, sft_dir: Path | None = None):
    """The model from its folder in the params' dtype (4-bit as TRL's QLoRA docs load it), with the SFT adapter
    merged in for DPO."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = models.torch_dtype(cfg)
    quantization = None
    if cfg.quantization == "4bit":
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, quantization_config=quantization)
    return PeftModel.from_pretrained(model, sft_dir).merge_and_unload() if sft_dir else model


def text_rows(prepared: Path, split: str, columns: dict):
    """TRL's conversational format from the prepare stage's rows: {trl column: our column}."""
    from datasets import Dataset

    rows = read_jsonl(Path(prepared) / f"{split}.jsonl")
    return Dataset.from_list([{new: row[old] for new, old in columns.items()} for row in rows])


def timed_train(trainer) -> dict:
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    return {"steps": trainer.state.global_step, "train_seconds": round(wall, 2),
            "tokens_seen": int(trainer.state.num_input_tokens_seen), "rows": len(trainer.train_dataset)}


def trl_sft(params, prepared: Path, model_dir: Path, work: Path, sampling: str = "random") -> dict:
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    section, lora, _ = train.resolve(params, params.sft, train.accelerator_memory_gb())
    columns = {"prompt": "prompt", "completion": "chosen"}
    trainer = SFTTrainer(
        model=plain_model(model_dir, params.model),
        args=SFTConfig(**plain_config(params, section, fresh(work, "trl-sft"), train_sampling_strategy=sampling)),
        train_dataset=text_rows(prepared, "train", columns), eval_dataset=text_rows(prepared, "validation", columns),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(task_type="CAUSAL_LM", **dataclasses.asdict(lora)))
    return timed_train(trainer)


def trl_dpo(params, prepared: Path, model_dir: Path, sft_dir: Path, work: Path) -> dict:
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    section, lora, _ = train.resolve(params, params.dpo, train.accelerator_memory_gb())
    columns = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
    args = DPOConfig(**plain_config(params, section, fresh(work, "trl-dpo"), beta=section.beta,
                                    loss_type=section.loss_type))
    trainer = DPOTrainer(
        model=plain_model(model_dir, params.model, sft_dir), ref_model=None, args=args,
        train_dataset=text_rows(prepared, "train", columns), eval_dataset=text_rows(prepared, "validation", columns),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(task_type="CAUSAL_LM", **dataclasses.asdict(lora)))
    return timed_train(trainer)


# -- the comparison ---------------------------------------------------------------------------------------------------
def steps_per_second(runs: list[dict]) -> float:
    return statistics.median(run["steps"] / run["train_seconds"] for run in runs)


def summary(ours: list[dict], trl: list[dict]) -> dict:
    """Median steps per second of each side over the repeats, and ours / TRL (>= 1: ours is not slower)."""
    mine, theirs = steps_per_second(ours), steps_per_second(trl)
    return {"ours_steps_per_second": round(mine, 3), "trl_steps_per_second": round(theirs, 3),
            "ours_over_trl_ratio": round(mine / theirs, 3),
            "ours_peak_rss_mib": max(r["peak_rss_mib"] for r in ours),
            "trl_peak_rss_mib": max(r["peak_rss_mib"] for r in trl), "ours_runs": ours, "trl_runs": trl}


def dpo_precomputed_reference(params, data: dict, steps: int, repeats: int, work: Path,
                              batch: int | None = None) -> dict:
    """DPO steps per second, ours (reference log-probs precomputed once: no reference forward in a step) against
    plain TRL computing the reference in every step: the same rows, steps, batch, LoRA and seed, `repeats` runs of
    each, interleaved. `data`: tokenized, base, prepared, weights (as in `compare`) and sft (the adapter both start
    from). `reference_seconds`: ours' one reference pass, outside its train_seconds (a sweep pays it once)."""
    dpo_params = with_steps(params, "dpo", steps, batch)
    ours, trl = [], []
    for _ in range(repeats):  # interleaved, so a change in machine load hits both sides alike
        ours.append(isolated(ours_dpo, dpo_params, data["tokenized"], data["base"], data["sft"], work))
        trl.append(isolated(trl_dpo, dpo_params, data["prepared"], data["weights"], data["sft"], work))
    return {**summary(ours, trl), "reference_seconds": statistics.median(r["reference_seconds"] for r in ours)}


def compare(params, data: dict, steps: int | dict, repeats: int, work: Path, batch: int | None = None,
            grouping: bool = False) -> dict:
    """SFT and DPO, ours and plain TRL, `repeats` times each. `data`: tokenized, base (our models/base), prepared,
    weights (the folder plain TRL loads), sft (the adapter DPO starts from; None: the one our SFT runs made).
    With `grouping`, plain TRL SFT also trains with train_sampling_strategy=group_by_length."""
    steps = steps if isinstance(steps, dict) else {"sft": steps, "dpo": steps}
    sft_params = with_steps(params, "sft", steps["sft"], batch)
    runs = {key: [] for key in ("sft_ours", "sft_trl", "sft_trl_grouped")}
    for _ in range(repeats):  # interleaved, so a change in machine load hits both sides alike
        runs["sft_ours"].append(isolated(ours_sft, sft_params, data["tokenized"], data["base"], work))
        runs["sft_trl"].append(isolated(trl_sft, sft_params, data["prepared"], data["weights"], work))
        if grouping:
            runs["sft_trl_grouped"].append(isolated(trl_sft, sft_params, data["prepared"], data["weights"], work,
                                                    "group_by_length"))
    sft_dir = data["sft"] or runs["sft_ours"][-1]["adapter"]
    for run in runs["sft_ours"]:  # a temporary folder's path: used above, meaningless (and machine-specific) in the JSON
        run.pop("adapter")
    result = {"steps": steps, "repeats": repeats, "sft": summary(runs["sft_ours"], runs["sft_trl"]),
              "dpo": dpo_precomputed_reference(params, {**data, "sft": sft_dir}, steps["dpo"], repeats, work, batch)}
    if grouping:
        random = statistics.median(r["train_seconds"] for r in runs["sft_trl"])
        grouped = statistics.median(r["train_seconds"] for r in runs["sft_trl_grouped"])
        result["sft_group_by_length"] = {"random_train_seconds": random, "group_by_length_train_seconds": grouped,
                                         "saving_share": round(1 - grouped / random, 3),
                                         "group_by_length_runs": runs["sft_trl_grouped"]}
    return result


def main():
    """`python -m bench.trainers [--steps 60] [--repeats 3]`: only the DPO figure, on this checkout's pipeline outputs
    (run `dvc repro` first), into the `dpo_precomputed_reference` section of metrics/bench.json (others kept)."""
    import argparse
    import json

    from rlhf import config
    from rlhf.io import write_json

    parser = argparse.ArgumentParser(description="DPO steps/s: precomputed reference (ours) against TRL on the fly.")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("metrics/bench.json"))
    args = parser.parse_args()
    data = {"tokenized": Path("data/tokenized"), "base": Path("models/base"), "prepared": Path("data/prepared"),
            "weights": Path("models/base"), "sft": Path("models/sft")}
    with tempfile.TemporaryDirectory(prefix="rlhf-dpo-ref-") as work:
        result = dpo_precomputed_reference(config.load(), data, args.steps, args.repeats, Path(work))
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    report["dpo_precomputed_reference"] = {"steps": args.steps, "repeats": args.repeats, **machine.stamp(), **result}
    write_json(args.out, report)
    print(json.dumps(report["dpo_precomputed_reference"], indent=2))


if __name__ == "__main__":
    main()
