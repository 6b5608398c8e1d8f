"""export: one model folder that plain `transformers` (and vLLM, llama.cpp's converters) load, with no PEFT and no
project code: base + SFT adapter + policy adapter merged, in `export.dtype`, with the tokenizer, its chat template,
a generation config that stops at the template's end-of-turn token, and a model card written from facts.

The export ships weights only for a policy that passed `eval.gate` (rlhf/gate.py). For one that failed,
`export.on_failed_gate` chooses: `card` writes only the model card, naming the failed checks, and succeeds (a method
that loses is a result, and its experiment must still show in `dvc exp show`); `fail` stops the stage, for release
and CI runs; `export` ships the weights anyway and the card says the gate failed.

A quantized base (`model.quantization: 4bit|8bit`) is merged into an unquantized copy of the base weights, as the
QLoRA authors do: the adapters were trained against the k-bit weights, and adding them to the full-precision weights
differs from the trained model only by the quantization error the adapters saw, while merging into k-bit weights
would round the adapters' deltas away and leave a folder only bitsandbytes can load.
"""
import dataclasses
import json
import subprocess
from pathlib import Path

import torch
import yaml

from rlhf import base, gate, generation, models
from rlhf.io import UserError, atomic_dir, read_json

CARD_FILE = "README.md"
# The outputs whose DVC hashes identify what was merged: the stage that writes each, and its name in rlhf/paths.py.
INPUTS = {"fetch": "fetched", "base": "base", "sft": "sft", "align": "policy", "evaluate": "eval_metrics"}


def refuse(failed: list[str]) -> None:
    """export.on_failed_gate: fail."""
    raise UserError(
        f"export refused: the policy failed eval.gate: {'; '.join(failed)}. Nothing was exported; the previous export "
        "is still in the DVC cache (`dvc checkout models/export` brings it back). Improve the policy, loosen the "
        "thresholds in eval.gate, or set export.on_failed_gate to card (write only the model card) or export (ship "
        "it anyway; the model card will say the gate failed)."
    )


def merged_policy(params, base_dir, sft_dir, policy_dir):
    """The policy as one plain transformers model in float32: base (unquantized) + SFT adapter + policy adapter."""
    cfg = dataclasses.replace(params.model, quantization="none", dtype="float32")
    # PEFT unties a trained lm_head copy (lora.modules_to_save) from the embeddings when it merges, so the saved
    # head is the trained one (tests/test_export.py compares log-probs)
    # on a policy trained from the base, models.policy loads the SFT adapter beside it (for evaluate's reference):
    # only the active, align adapter is merged, and the SFT adapter is dropped with the rest of PEFT's layers
    return models.policy(base_dir, sft_dir, policy_dir, cfg).merge_and_unload().eval()


def export_dtype(params) -> torch.dtype:
    name = params.export.dtype
    return models.torch_dtype(params.model) if name == "auto" else getattr(torch, name)


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not run in a git checkout)"
    return f"{head} (with uncommitted changes)" if dirty else head


def dvc_hashes(paths, lock_path: str | Path = "dvc.lock") -> dict:
    """{output: md5} of the merged inputs as dvc.lock records them (DVC writes each stage's entry when it finishes,
    so during `dvc repro` these are the inputs of this run)."""
    path = Path(lock_path)
    if not path.is_file():
        return {}
    stages = yaml.safe_load(path.read_text()).get("stages", {})
    hashes = {}
    for stage, name in INPUTS.items():
        output = str(getattr(paths, name))
        for entry in stages.get(stage, {}).get("outs", []):
            if entry["path"] == output:
                hashes[output] = entry.get("md5")
    return hashes


def facts(params, paths, eval_metrics: dict, failed: list[str], dtype: torch.dtype) -> dict:
    weights = read_json(Path(paths.base) / base.BASE_FILE)["weights"]
    method = params.method
    return {
        "base_model": weights,
        "model": {"name": params.model.name, "revision": params.model.revision,
                  "quantization_in_training": params.model.quantization, "export_dtype": str(dtype).split(".")[1]},
        "data": {"source": params.data.source, "name": params.data.name, "split": params.data.split,
                 "revision": params.data.revision},
        "method": method,
        "method_params": dataclasses.asdict(getattr(params, method)),
        "lora": dataclasses.asdict(params.lora),
        "seed": params.seed,
        "eval": eval_metrics,
        "gate_failed": failed,
        "exported": not failed or params.export.on_failed_gate == "export",
        "git_commit": git_commit(),
        "dvc_hashes": dvc_hashes(paths),
    }


def model_card(f: dict) -> str:
    """The folder's README.md: Hugging Face front matter, then the facts as tables and JSON. Without weights (a
    failed gate, export.on_failed_gate: card) it says so first, with each failed check."""
    front = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": ["rlhf", f["method"]]}
    verdict = ("passed" if not f["gate_failed"] else
               f"FAILED, {'exported anyway' if f['exported'] else 'not exported'} (export.on_failed_gate): "
               + "; ".join(f["gate_failed"]))
    rows = [("base model", json.dumps(f["base_model"])),
            ("base model hash (DVC, models/base)", f["dvc_hashes"].get("models/base", "not run through DVC")),
            ("data source", json.dumps(f["data"])),
            ("data hash (DVC, data/fetched)", f["dvc_hashes"].get("data/fetched", "not run through DVC")),
            ("method", f["method"]), ("export dtype", f["model"]["export_dtype"]),
            ("quantization in training", f["model"]["quantization_in_training"]), ("seed", f["seed"]),
            ("eval.gate", verdict), ("git commit (the code is in dvc.lock's hashes)", f["git_commit"])]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    title = f"# Aligned policy ({f['method']})\n\n"
    if not f["exported"]:
        checks = "\n".join(f"- {reason}" for reason in f["gate_failed"])
        title = (f"# Not exported: the {f['method']} policy failed eval.gate\n\nThis folder holds no weights. The "
                 f"failed checks, each with its value and threshold:\n\n{checks}\n\nThe evaluation below says "
                 "how the policy compares with SFT. The policy's LoRA adapter is still in models/policy; "
                 "export.on_failed_gate: export ships it anyway.\n\n")
    load = ("## Load it\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(\"models/export\")\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"models/export\")\n```\n") if f["exported"] else ""
    return (f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n{title}"
            "Written by the `export` stage from recorded facts; every value below is machine-generated.\n\n"
            f"| fact | value |\n| --- | --- |\n{table}\n\n## Evaluation (metrics/eval.json)\n\n"
            f"```json\n{json.dumps(f['eval'], indent=2)}\n```\n\n## Method params\n\n"
            f"```json\n{json.dumps(f['method_params'], indent=2)}\n```\n\n## DVC hashes of the inputs\n\n"
            f"```json\n{json.dumps(f['dvc_hashes'], indent=2)}\n```\n\n{load}")


def write(params, paths, out: Path) -> dict | None:
    """Write the export into `out` (a fresh folder); returns the facts recorded in its card (None: not enabled)."""
    if not params.export.enabled:  # DVC needs the output folder: a note in it says why it holds no model
        (out / CARD_FILE).write_text(f"# Not exported\n\nexport.enabled is false; the policy adapter is in "
                                     f"{paths.policy}.\n")
        return None
    eval_metrics = read_json(paths.eval_metrics)
    # the reasons from the numbers and eval.gate (a dep of this stage): metrics/eval.json holds only booleans
    failed = gate.failures(eval_metrics, params.eval.gate)
    if failed and params.export.on_failed_gate == "fail":
        refuse(failed)
    dtype = export_dtype(params)
    recorded = facts(params, paths, eval_metrics, failed, dtype)
    if not recorded["exported"]:
        (out / CARD_FILE).write_text(model_card(recorded))
        return recorded
    tokenizer = models.tokenizer(paths.base)
    model = merged_policy(params, paths.base, paths.sft, paths.policy).to(dtype)
    stops = generation.stop_ids(tokenizer)  # the template's end of turn, which need not be the tokenizer's EOS (Gemma)
    model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / CARD_FILE).write_text(model_card(recorded))
    return recorded


def run(params, paths) -> None:
    """The export stage: paths.export, with weights or (a failed gate) only a card; or, with a failed gate and
    export.on_failed_gate: fail, a refusal that leaves the previous export as it was."""
    with atomic_dir(paths.export) as tmp:
        recorded = write(params, paths, tmp)
    if recorded is None:
        print(f"export: export.enabled is false; {paths.export} holds only a note")
    elif not recorded["gate_failed"]:
        print(f"export: {paths.export} ({recorded['method']}, {recorded['model']['export_dtype']}, gate passed)")
    else:
        done = (f"exported anyway to {paths.export}" if recorded["exported"] else
                f"no weights; {paths.export}/{CARD_FILE} says why")
        print(f"export: the {recorded['method']} policy failed eval.gate, {done} (export.on_failed_gate): "
              + "; ".join(recorded["gate_failed"]))
