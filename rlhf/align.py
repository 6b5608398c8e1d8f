"""align: the alignment method chosen by `method`, looked up by name, and the stage's own before/after check.

Each method lives in rlhf/methods/<name>.py and exposes the same `run` (see rlhf/methods/__init__.py)."""
import dataclasses
import importlib
import statistics

from rlhf import generation, launch, models, resuming, tokenize, train
from rlhf.config import METHODS
from rlhf.io import UserError, provenance, write_json

INFO_FILE = models.POLICY_INFO_FILE


def method_runner(name: str):
    """The `run` function of rlhf/methods/<name>.py (imported on demand: each pulls in its own trainer)."""
    if name not in METHODS:
        raise UserError(f"method = {name!r} is not an alignment method; available: {', '.join(METHODS)}.")
    return importlib.import_module(f"rlhf.methods.{name}").run


def check_processes(params) -> None:
    """Our PPO loop is plain PyTorch, not an accelerate-ready trainer, and online_dpo's sampling and judging between
    its trainers' rounds is ours too: they run in one process."""
    several = params.compute.num_processes > 1 or params.compute.accelerate_config is not None
    if params.method in ("ppo", "online_dpo") and several:
        raise UserError(f"method {params.method} trains in one process (its loop is ours, not an accelerate trainer), "
                        "but compute asks for several. Set compute.num_processes: 1 and compute.accelerate_config: "
                        f"null for {params.method}.")


def check_checkpointing(params) -> None:
    """Our PPO loop keeps the model in eval mode (no dropout, so the first update's ratio is exactly 1), and
    transformers checkpoints activations only in training mode: refuse rather than ignore the param."""
    if params.method == "ppo" and params.compute.activation_checkpointing:
        raise UserError("compute.activation_checkpointing: true is not supported by method ppo: its loop runs the "
                        "model in eval mode, where transformers does not checkpoint activations, so the param would "
                        "be ignored. Set compute.activation_checkpointing: false for ppo (or use grpo, which honours "
                        "it).")


def oracle_check(params, paths, model) -> dict:
    """Mean oracle reward of SFT and policy samples on the first validation prompts (built-in tasks only).

    The evaluate stage measures properly; this is the align stage's own evidence that the method moved the policy
    the right way. The SFT side is `model` with its new adapter off (or, trained from the base, the SFT adapter
    loaded beside it): no second model is loaded."""
    task = generation.builtin_task(params.data.source)
    if task is None:
        return {}
    tokenizer = models.tokenizer(paths.base)
    validation = tokenize.load_split(paths.tokenized, "validation", 10**9)
    prompts = validation["prompt_ids"][: params.align.oracle_eval_prompts]
    model = model.eval()
    if not models.starts_from_sft(params.method, params.orpo.init):
        models.add_sft_adapter(model, paths.sft)

    def mean_oracle():
        completions = generation.generate(model, prompts, tokenizer, params.align.max_new_tokens,
                                          params.align.temperature, seed=params.seed)
        return statistics.mean(generation.oracle_scores(task, prompts, completions, tokenizer))

    with models.reference(model):
        means = {"sft": mean_oracle()}
    means["policy"] = mean_oracle()
    return {"oracle_sft": round(means["sft"], 6), "oracle_policy": round(means["policy"], 6),
            "oracle_gain": round(means["policy"] - means["sft"], 6)}


def run(params, paths) -> None:
    """The align stage: the policy's adapter, tokenizer and align.json (method, starting point, provenance) in
    paths.policy; paths.align_metrics has the method's own training metrics and, on a built-in task, the mean oracle
    reward of SFT and policy samples on validation prompts."""
    # Every method reads params.seed: here it is align.seed, so that a multi-seed comparison varies the policy's
    # training alone (the stage does not declare the top-level seed; SFT and the reward model stay cached).
    params = dataclasses.replace(params, seed=params.align.seed)
    run_method = method_runner(params.method)
    check_processes(params)
    check_checkpointing(params)
    if launch.relaunch(params.compute, "stages.align"):
        return
    with launch.stage_output(paths.policy) as tmp:
        metrics, model = run_method(params, paths, tmp)
        if launch.is_main_process():
            metrics.update(oracle_check(params, paths, model))
            starts_from = "sft" if models.starts_from_sft(params.method, params.orpo.init) else "base"
            write_json(tmp / INFO_FILE, {"method": params.method, "starts_from": starts_from, **provenance(
                seed=params.seed, model=params.model, lora=params.lora, compute=params.compute,
                **{params.method: getattr(params, params.method)})})
    if not launch.is_main_process():
        return
    write_json(paths.align_metrics, {"method": params.method, **train.model_settings(params), **metrics})
    print(f"align ({params.method}): {metrics}")
    resuming.discard_checkpoints(paths.align_checkpoints)  # only a run that died resumes
