"""evaluate: the aligned policy against the SFT model on the validation split, with fixed seeds.

Every number comes from the two models' outputs on the same prompts, seed and settings (the SFT model's side, which
no experiment changes, from the sft_answers stage; see rlhf/sft_answers.py):
- win rate of the policy over SFT on the same prompts, judged by the reward model (ties counted apart), and on a
  built-in task by the oracle too, with both models' mean oracle reward;
- preference accuracy on the validation pairs by implicit reward: log pi(y|x) - log pi_sft(y|x), chosen above
  rejected (for DPO-family methods, their own reward; for the others, the same yardstick);
- KL(policy || SFT) estimated on the policy's own samples, and mean answer lengths, so that drift and length hacking
  show;
- loss and perplexity of the chosen validation answers under both models;
- 95% intervals and length-controlled win rates, and degeneration measures: repeated n-grams, distinct-n, empty and
  cut-off answers, the SFT model's perplexity of the answers (rlhf/stats.py);
- with a reward-model ensemble, its members' disagreement on each model's answers: a rise from SFT's to the policy's
  means the policy went where the reward models do not know (`uncertainty_metrics`).
"""
import statistics
from pathlib import Path

import torch

from rlhf import gate, generation, models, scoring, sft_answers, stats
from rlhf.io import read_json, write_json, write_jsonl

BOOTSTRAP_RESAMPLES = 1000  # percentile endpoints of 1000 resamples move by about 0.005 between seeds


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
    ensemble = read_json(Path(paths.reward) / models.REWARD_ENSEMBLE_FILE)
    metrics |= uncertainty_metrics(sides, shared["rm_stats"], ensemble)
    oracle = {name: side["oracle"] for name, side in sides.items() if "oracle" in side}
    if oracle:
        metrics |= {f"oracle_mean_{name}": s.mean().item() for name, s in oracle.items()}
        metrics |= {f"oracle_{k}": v for k, v in win_rate(oracle["policy"], oracle["sft"]).items()}

    # -- drift: KL on the policy's own samples (their log-probs under the policy are part of its side), and lengths
    with models.reference(model):
        sft_of_policy = scoring.completion_logprobs(model, prompts, answers["policy"], tokenizer.pad_token_id,
                                                    cfg.batch_size)
    metrics["kl_policy_sft"] = kl_estimate(sides["policy"]["answer_logps"][0], sft_of_policy[0])
    metrics |= {f"length_{name}": statistics.mean(len(a) for a in ans) for name, ans in answers.items()}

    # -- the validation pairs: implicit-reward accuracy and the chosen answers' loss
    metrics["implicit_accuracy"] = implicit_accuracy(sides["policy"]["chosen"][0], sides["sft"]["chosen"][0],
                                                     sides["policy"]["rejected"][0], sides["sft"]["rejected"][0])
    for name, side in sides.items():
        total, count = side["chosen"]
        metrics[f"chosen_loss_{name}"] = -total.sum().item() / count.sum().item()
        metrics[f"chosen_perplexity_{name}"] = float(torch.exp(torch.tensor(metrics[f"chosen_loss_{name}"])))

    # -- the numbers' noise (intervals, length-controlled win rates) and degeneration (rlhf/stats.py); fluency is
    # each model's answers under the SFT model, so the SFT side's own log-probs
    lengths = {name: torch.tensor([len(a) for a in ans]) for name, ans in answers.items()}
    metrics |= interval_metrics({"rm": rm_scores, **({"oracle": oracle} if oracle else {})}, lengths, params.seed)
    metrics |= degeneration_metrics(answers, {"sft": sft["answer_logps"], "policy": sft_of_policy},
                                    cfg.max_new_tokens, generation.stop_ids(tokenizer))
    metrics = {k: round(v, 6) for k, v in metrics.items()}
    metrics |= gate.verdict(metrics, cfg.gate)  # booleans only; the reasons: gate.failures, printed by run()
    samples = readable_samples(prompts, answers, rm_scores, oracle, tokenizer, cfg.num_samples)
    judged = oracle or rm_scores
    plots = {"reward_hist": histogram({name: s.tolist() for name, s in judged.items()}),
             "frontier": [{"method": params.method, "kl": metrics["kl_policy_sft"],
                           "reward": judged["policy"].mean().item(), "judge": "oracle" if oracle else "reward_model"}]}
    return metrics, samples, plots


def uncertainty_metrics(sides: dict[str, dict], member_stats: list[dict], ensemble: dict) -> dict:
    """The reward ensemble on the validation pairs (as the reward stage measured it: the ensemble's accuracy, the
    accuracy of its members' mean normalized score, and its weakest member's), and its members' disagreement on each
    model's answers: rm_std_<model>, the mean over answers of the std of the members' normalized scores, and
    rm_uncertainty_rise = rm_std_policy - rm_std_sft. One reward model: both 0. Five keys (six with the gate's), not
    one per member: `dvc exp show` shows every key (metrics/reward.json has each member's accuracy)."""
    std = {name: side["rm_std"].mean().item() for name, side in sides.items()}
    return {"rm_ensemble_accuracy": ensemble["accuracy"],
            "rm_member_min_accuracy": min(s["accuracy"] for s in member_stats),
            "rm_std_sft": std["sft"], "rm_std_policy": std["policy"],
            "rm_uncertainty_rise": std["policy"] - std["sft"]}


def interval_metrics(judged: dict[str, dict[str, torch.Tensor]], lengths: dict[str, torch.Tensor], seed: int) -> dict:
    """95% intervals and length-controlled win rates of the policy against SFT, per judge.

    `judged`: {judge ("rm", "oracle"): {"policy": (N,) scores, "sft": (N,) scores}} of the same N prompts; `lengths`:
    {"policy": (N,), "sft": (N,)} answer lengths in tokens. Keys per judge: <judge>_win_rate_ci_low/high (Wilson),
    <judge>_mean_diff and its _ci_low/high (paired bootstrap), <judge>_win_rate_lc and its _ci_low/high (bootstrap);
    see rlhf/stats.py for why each. Scalars only: `dvc metrics show` drops lists."""
    out = {}
    for judge, s in judged.items():
        policy_scores, sft_scores = s["policy"], s["sft"]
        wins = int((policy_scores > sft_scores).sum())
        low, high = stats.wilson_interval(wins, len(policy_scores))
        out |= {f"{judge}_win_rate_ci_low": low, f"{judge}_win_rate_ci_high": high}
        out[f"{judge}_mean_diff"] = (policy_scores - sft_scores).double().mean().item()
        low, high = stats.mean_difference_interval(policy_scores, sft_scores, BOOTSTRAP_RESAMPLES, seed)
        out |= {f"{judge}_mean_diff_ci_low": low, f"{judge}_mean_diff_ci_high": high}
        lc, low, high = stats.lc_win_rate(policy_scores, sft_scores, lengths["policy"], lengths["sft"],
                                          BOOTSTRAP_RESAMPLES, seed)
        out |= {f"{judge}_win_rate_lc": lc, f"{judge}_win_rate_lc_ci_low": low, f"{judge}_win_rate_lc_ci_high": high}
    return out


def degeneration_metrics(answers: dict[str, list[list[int]]], sft_logps: dict[str, tuple], max_new_tokens: int,
                         stops: list[int]) -> dict:
    """Per model (the keys of `answers`, token ids per prompt): repetition_<name> (4-gram, within answers),
    distinct1_<name>, distinct2_<name> (over all answers), empty_share_<name>, cutoff_share_<name>, and, for the
    models in `sft_logps` ({name: ((N,) summed log-probs, (N,) token counts) of that model's own answers under the
    SFT model}), fluency_perplexity_<name>."""
    out = {}
    for name, ans in answers.items():
        out |= {f"repetition_{name}": stats.repetition(ans), f"distinct1_{name}": stats.distinct_n(ans, 1),
                f"distinct2_{name}": stats.distinct_n(ans, 2), f"empty_share_{name}": stats.empty_share(ans, stops),
                f"cutoff_share_{name}": stats.cutoff_share(ans, max_new_tokens, stops)}
        if name in sft_logps:
            out[f"fluency_perplexity_{name}"] = stats.perplexity(*sft_logps[name])
    return out


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
    failed = gate.failures(metrics, params.eval.gate)
    print(f"evaluate: eval.gate {'FAILED: ' + '; '.join(failed) if failed else 'passed'}")
