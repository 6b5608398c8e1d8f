"""The regression gate, `eval.gate`: thresholds the policy must meet against SFT before export ships its weights.

evaluate writes the verdict into metrics/eval.json as short keys that `dvc exp show` can hold (gate_passed, and one
gate_<check> per check that ran, true when it passed); export recomputes the readable reasons from the same numbers
and thresholds for its card and its messages, so metrics/eval.json carries no long strings.
"""

# (the value checked, the rule, its threshold in eval.gate)
CHECKS = [("rm_win_rate", ">=", "min_rm_win_rate"), ("oracle_win_rate", ">=", "min_oracle_win_rate"),
          ("kl_policy_sft", "<=", "max_kl"), ("length_change", "within +-", "max_length_change"),
          ("perplexity_rise", "<=", "max_perplexity_rise"), ("repetition_policy", "<=", "max_repetition"),
          ("empty_share_policy", "<=", "max_empty_share"), ("cutoff_share_policy", "<=", "max_cutoff_share"),
          ("distinct2_ratio", ">=", "min_distinct2_ratio"), ("rm_uncertainty_rise", "<=", "max_uncertainty_rise")]


def checks(metrics: dict, gate) -> dict[str, str | None]:
    """{check: None if it passed, else the reason naming its value and threshold} for every check that ran.

    Relative changes against SFT: length_change = length_policy / length_sft - 1 (either way),
    perplexity_rise = chosen_perplexity_policy / chosen_perplexity_sft - 1, distinct2_ratio = distinct2_policy /
    distinct2_sft (corpus-level distinct-2 falls with the number of answers, so only its ratio to SFT's on the same
    prompts has a threshold that fits any eval.num_prompts). rm_uncertainty_rise (evaluate's) is how much more the
    reward ensemble's members disagree on the policy's answers than on SFT's: 0 with one reward model. The degeneration
    checks (repetition, empty and cut-off answers, distinct-2) are on the policy's own values, not relative: SFT's
    answers are expected to pass them. A null threshold, or a metric this run has not got (no oracle outside the
    built-in tasks), skips its check."""
    sft_distinct2 = metrics.get("distinct2_sft")
    derived = {"length_change": metrics["length_policy"] / metrics["length_sft"] - 1,
               "distinct2_ratio": metrics["distinct2_policy"] / sft_distinct2 if sft_distinct2 else None,
               "perplexity_rise": metrics["chosen_perplexity_policy"] / metrics["chosen_perplexity_sft"] - 1}
    out = {}
    for name, rule, key in CHECKS:
        value, threshold = derived.get(name, metrics.get(name)), getattr(gate, key)
        if value is None or threshold is None:
            continue
        ok = {">=": value >= threshold, "<=": value <= threshold, "within +-": abs(value) <= threshold}[rule]
        out[name] = None if ok else (f"{name} = {value:.4g} (must be {rule}{'' if rule.endswith('-') else ' '}"
                                     f"{threshold:g}, eval.gate.{key})")
    return out


def failures(metrics: dict, gate) -> list[str]:
    """The reasons of the checks the policy fails; [] when it passes."""
    return [reason for reason in checks(metrics, gate).values() if reason]


def verdict(metrics: dict, gate) -> dict[str, bool]:
    """The keys evaluate adds to metrics/eval.json: gate_passed and gate_<check> (true: passed), booleans only, so
    that `dvc exp show` shows which checks failed in a column each."""
    ran = checks(metrics, gate)
    return {"gate_passed": not any(ran.values()), **{f"gate_{name}": reason is None for name, reason in ran.items()}}
