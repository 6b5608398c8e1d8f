"""evaluate: the aligned policy against the SFT model on the validation split, with fixed seeds.

Every number comes from the two models' outputs on the same prompts, seed and settings (the SFT model's side, which
no experiment changes, from the sft_answers stage; see rlhf/sft_answers.py):
- win rate of the policy over SFT on the same prompts, judged by the reward model (ties counted apart), and on a
  built-in task by the oracle too, with both models' mean oracle reward;
- preference accuracy on the validation pairs by implicit reward: log pi(y|x) - log pi_sft(y|x), chosen above
  rejected (for DPO-family methods, their own reward; for the others, the same yardstick);
- KL(policy || SFT) estimated on the policy's own samples, and mean answer lengths, so that drift and length hacking
  show;
- loss and perplexity of the chosen validation answers under both models.
"""
import statistics
from pathlib import Path

import torch

from rlhf import generation, models, scoring, sft_answers
from rlhf.io import write_json, write_jsonl


def win_rate(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Shares of rows where `a` beats, ties and loses to `b`. Inputs: (N,) scores of the same prompts."""
    return {"win_rate": (a > b).float().mean().item(), "tie_rate": (a == b).float().mean().item(),
            "loss_rate": (a < b).float().mean().item()}


def kl_estimate(logp_policy: torch.Tensor, logp_reference: torch.Tensor) -> float:
    """Monte Carlo KL(policy || reference) = E_{y ~ policy}[log policy(y|x) - log reference(y|x)].

    Inputs: (N,) sequence log-probabilities (summed over answer tokens) of N answers sampled from the policy itself,
    under each model. Unbiased only when the answers are plain samples of the policy (temperature 1, no top-p).
    """
    return (logp_policy - logp_reference).mean().item()


def implicit_accuracy(policy_chosen, reference_chosen, policy_rejected, reference_rejected) -> float:
    """Share of pairs whose implicit reward log pi(y|x) - log pi_ref(y|x) is higher for chosen than for rejected
    (Rafailov et al. 2023, eq. 5, up to beta). Inputs: (N,) sequence log-probabilities."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return (margin > 0).float().mean().item()


def histogram(values: dict[str, list[float]], bins: int = 20) -> list[dict]:
    """Counts of each series in shared equal-width bins: rows {"reward": bin centre, <series>: count, ...}."""
    low = min(min(v) for v in values.values())
    high = max(max(v) for v in values.values())
    width = (high - low) / bins or 1.0
    rows = [{"reward": round(low + (i + 0.5) * width, 4), **dict.fromkeys(values, 0)} for i in range(bins)]
    for name, series in values.items():
        for v in series:
            rows[min(int((v - low) / width), bins - 1)][name] += 1
    return rows


def measure(params, paths, cached_sft: bool = True) -> tuple[dict, list[dict], dict]:
    """(metrics, readable samples, plot data) for the policy in paths.policy against the SFT model. The SFT model's
    side comes from the sft_answers stage's output (paths.sft_answers), or, with `cached_sft=False`, is computed
    here."""
    cfg = params.eval
    shared = sft_answers.shared_inputs(params, paths)
    tokenizer, prompts = shared["tokenizer"], shared["prompts"]
    # one model for both sides: under models.reference it is the SFT model, which the KL needs either way (its
    # log-probs of the policy's answers), so the base weights are loaded twice in all, here and in the reward model
    model = models.policy(paths.base, paths.sft, paths.policy, params.model)
    if cached_sft:
        sft = sft_answers.load(paths.sft_answers, shared["validation"], cfg.num_prompts)
    else:
        with models.reference(model):
            sft = sft_answers.measure(model, params, shared)
    # -- answers from both models (same prompts and seed) and their scores
    sides = {"sft": sft, "policy": sft_answers.measure(model, params, shared)}
    answers = {name: side["answers"] for name, side in sides.items()}
    rm_scores = {name: side["rm"] for name, side in sides.items()}
    metrics = {f"rm_{k}": v for k, v in win_rate(rm_scores["policy"], rm_scores["sft"]).items()}
    metrics |= {f"rm_mean_{name}": s.mean().item() for name, s in rm_scores.items()}
    oracle = {name: side["oracle"] for name, side in sides.items() if "oracle" in side}
    if oracle:
        metrics |= {f"oracle_mean_{name}": s.mean().item() for name, s in oracle.items()}
        metrics |= {f"oracle_{k}": v for k, v in win_rate(oracle["policy"], oracle["sft"]).items()}

    # -- drift: KL on the policy's own samples, and answer lengths
    def logp_of_policy_answers():
        return scoring.completion_logprobs(model, prompts, answers["policy"], tokenizer.pad_token_id,
                                           cfg.batch_size)[0]

    logp = {"policy": logp_of_policy_answers()}
    with models.reference(model):
        logp["sft"] = logp_of_policy_answers()
    metrics["kl_policy_sft"] = kl_estimate(logp["policy"], logp["sft"])
    metrics |= {f"length_{name}": statistics.mean(len(a) for a in ans) for name, ans in answers.items()}

    # -- the validation pairs: implicit-reward accuracy and the chosen answers' loss
    metrics["implicit_accuracy"] = implicit_accuracy(sides["policy"]["chosen"][0], sides["sft"]["chosen"][0],
                                                     sides["policy"]["rejected"][0], sides["sft"]["rejected"][0])
    for name, side in sides.items():
        total, count = side["chosen"]
        metrics[f"chosen_loss_{name}"] = -total.sum().item() / count.sum().item()
        metrics[f"chosen_perplexity_{name}"] = float(torch.exp(torch.tensor(metrics[f"chosen_loss_{name}"])))

    metrics = {k: round(v, 6) for k, v in metrics.items()}
    failed = gate_failures(metrics, cfg.gate)
    metrics |= {"gate_passed": not failed, "gate_failed": "; ".join(failed)}  # `dvc metrics show` drops lists
    samples = readable_samples(prompts, answers, rm_scores, oracle, tokenizer, cfg.num_samples)
    judged = oracle or rm_scores
    plots = {"reward_hist": histogram({name: s.tolist() for name, s in judged.items()}),
             "frontier": [{"method": params.method, "kl": metrics["kl_policy_sft"],
                           "reward": judged["policy"].mean().item(), "judge": "oracle" if oracle else "reward_model"}]}
    return metrics, samples, plots


def gate_failures(metrics: dict, gate) -> list[str]:
    """The checks of `eval.gate` that the policy fails, each naming its value and threshold; [] when it passes.

    Relative changes against SFT: length_change = length_policy / length_sft - 1 (either way),
    perplexity_rise = chosen_perplexity_policy / chosen_perplexity_sft - 1. A null threshold, or a metric this run
    has not got (no oracle outside the built-in tasks), skips its check."""
    derived = {"length_change": metrics["length_policy"] / metrics["length_sft"] - 1,
               "perplexity_rise": metrics["chosen_perplexity_policy"] / metrics["chosen_perplexity_sft"] - 1}
    checks = [("rm_win_rate", ">=", "min_rm_win_rate"), ("oracle_win_rate", ">=", "min_oracle_win_rate"),
              ("kl_policy_sft", "<=", "max_kl"), ("length_change", "within +-", "max_length_change"),
              ("perplexity_rise", "<=", "max_perplexity_rise")]
    failed = []
    for name, rule, key in checks:
        value, threshold = derived.get(name, metrics.get(name)), getattr(gate, key)
        if value is None or threshold is None:
            continue
        ok = {">=": value >= threshold, "<=": value <= threshold, "within +-": abs(value) <= threshold}[rule]
        if not ok:
            failed.append(f"{name} = {value:.4g} (must be {rule}{'' if rule.endswith('-') else ' '}{threshold:g}, "
                          f"eval.gate.{key})")
    return failed


def readable_samples(prompts, answers, rm_scores, oracle, tokenizer, n: int) -> list[dict]:
    rows = []
    for i in range(min(n, len(prompts))):
        row = {"prompt": generation.prompt_text(prompts[i], tokenizer)}
        for name in ("sft", "policy"):
            row[f"{name}_answer"] = tokenizer.decode(answers[name][i], skip_special_tokens=True)
            row[f"{name}_reward_model"] = round(rm_scores[name][i].item(), 4)
            if oracle:
                row[f"{name}_oracle"] = round(oracle[name][i].item(), 4)
        rows.append(row)
    return rows


def run(params, paths) -> None:
    """The evaluate stage: paths.eval_metrics (flat, numeric, stable keys for `dvc metrics diff`), paths.samples (a
    file a person can read: prompt, both answers, their scores) and the plot data in paths.eval_plots."""
    metrics, samples, plots = measure(params, paths)
    for name, rows in plots.items():
        write_json(Path(paths.eval_plots) / f"{name}.json", rows)
    tmp = Path(paths.samples).with_suffix(".tmp-jsonl")
    write_jsonl(tmp, samples)
    tmp.replace(paths.samples)
    write_json(paths.eval_metrics, metrics)
    print(f"evaluate ({params.method}): {metrics}")
