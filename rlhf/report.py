"""The tables of docs/results.md, generated from `make compare`'s and `make study`'s experiments, never typed by hand.

    python -m rlhf.report            # print the tables of the experiments run so far (from dvc exp show)
    python -m rlhf.report --write    # also write metrics/experiments.json (the input) and docs/results.md (make report)
    python -m rlhf.report --render   # docs/results.md again from the committed metrics/experiments.json, no DVC
    python -m rlhf.report --plan ensemble --seeds 3   # the experiments a study still needs: `name -S ...` lines

An experiment is named `<arm>-seed<k>`: an arm is a method (`make compare`: dpo, orpo, ...) or one side of a study
(STUDIES: e.g. grpo_ensemble, GRPO with an ensemble of reward models), run with align.seed k. `collect` reads
`dvc exp show --json` and keeps, of every such experiment, its arm, method, align.seed and metrics/eval.json, with the
machine, date and git revision. That record is committed, so the check that docs/results.md matches it needs no DVC
experiments (tests/unit/test_report.py). `render` turns the record into markdown; the rest are pure formatting.

Two kinds of noise, reported apart: `± sd` is the spread over align seeds (training), the bracket is the 95% interval
over prompts that evaluate writes for each run (which prompts happened to be in validation), averaged over seeds.
"""
import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from rlhf.config import METHODS
from rlhf.io import UserError

INPUT = Path("metrics/experiments.json")
OUTPUT = Path("docs/results.md")
NAME = re.compile(r"^(?P<arm>[a-z][a-z0-9_]*)-seed(?P<seed>\d+)$")  # <arm>-seed<k>, as make compare / study name them
Z95 = 1.959964

# The studies `make study STUDY=<name>` runs: arm -> its `dvc exp run -S` settings over the baseline params. An arm
# that is a plain method is the same experiment as make compare's (same name), so it is run once for both.
STUDIES = {
    "methods": {"title": "Methods against SFT", "arms": {m: [f"method={m}"] for m in METHODS}},
    "ensemble": {
        "title": "GRPO: one reward model against an ensemble of 4 with the conservative reward",
        "text": ("GRPO trained against one reward model, and against an ensemble of 4 (members differing by seed and "
                 "bootstrap sample) whose reward is the members' mean minus their std (`grpo.rewards.aggregate: "
                 "mean_minus_std`, coefficient 1). Same steps, same held-out prompts. The oracle judges both; the "
                 "reward-model win rate is each arm's own judge, the reward model(s) it trained against (for the "
                 "ensemble, the members' mean), so the gap, reward-model win rate minus oracle win rate, is how far "
                 "the policy fooled its own reward: the over-optimisation an ensemble is meant to shrink."),
        "arms": {"grpo": ["method=grpo"],
                 "grpo_ensemble": ["method=grpo", "reward.ensemble.members=4", "grpo.rewards.aggregate=mean_minus_std"]}},
    "online": {
        "title": "On-policy DPO rounds against offline DPO",
        "text": ("Offline DPO on the dataset's pairs, and DPO rounds on pairs of the policy's own answers judged by "
                 "the reward model (best against worst per prompt), with the same total optimizer steps."),
        "arms": {"dpo": ["method=dpo"], "online_dpo": ["method=online_dpo"]}},
    "ppo": {
        "title": "PPO options",
        "text": ("Our PPO with its defaults (a value head on the policy's trunk, rewards normalized by the reward "
                 "stage's validation pairs, a fixed KL coefficient), and with one option changed per arm: a separate "
                 "critic initialised from the reward model (`ppo.critic: separate`), the reward normalized by the "
                 "reward model's scores on SFT answers (`ppo.reward_normalization: sft_samples`, as Ziegler et al.), "
                 "and the adaptive KL coefficient (`ppo.adap_kl_ctrl: true`). Same rounds, same held-out prompts."),
        "arms": {"ppo": ["method=ppo"],
                 "ppo_separate_critic": ["method=ppo", "ppo.critic=separate"],
                 "ppo_sft_normalization": ["method=ppo", "ppo.reward_normalization=sft_samples"],
                 "ppo_adaptive_kl": ["method=ppo", "ppo.adap_kl_ctrl=true"]}},
    "dpo_beta": {
        "title": "DPO's beta",
        "text": ("A sweep of `dpo.beta`, the strength of DPO's implicit KL constraint to the SFT reference: the "
                 "default 0.1 against a third of it and three times it. Lower lets the policy move further from SFT."),
        "arms": {"dpo": ["method=dpo"],
                 "dpo_beta_0_03": ["method=dpo", "dpo.beta=0.03"],
                 "dpo_beta_0_3": ["method=dpo", "dpo.beta=0.3"]}},
}


# -- collecting the record (DVC, git, the machine)

def experiments(show: list[dict]) -> tuple[list[dict], str | None]:
    """The `<arm>-seed<k>` experiments in `dvc exp show --json` output, as {name, arm, method, seed, metrics}, sorted,
    and the git revision they were run from (their baseline commit). Failed or queued runs have no metrics, and a
    running one shows the workspace's metrics, not its own: both skipped."""
    found, baseline = [], None
    for commit in show:
        for exp_range in commit.get("experiments") or []:
            if (exp_range.get("executor") or {}).get("state", "success") != "success":
                continue
            for exp in exp_range["revs"]:
                match = NAME.match(exp.get("name") or "")
                data = exp.get("data") or {}
                metrics = (data.get("metrics") or {}).get("metrics/eval.json", {}).get("data")
                if not match or not metrics:
                    continue
                params = data["params"]["params.yaml"]["data"]
                found.append({"name": exp["name"], "arm": match["arm"], "method": params["method"],
                              "seed": params["align"]["seed"], "date": data.get("timestamp"), "metrics": metrics})
                baseline = commit["rev"]
    return sorted(found, key=lambda e: (e["arm"], e["seed"])), baseline


def plan(study: str, seeds: int, existing: set[str]) -> list[str]:
    """`<name> -S k=v ...` for each experiment of `study` x align seeds 0..seeds-1 not already in `existing`."""
    if study not in STUDIES:
        raise UserError(f"unknown study {study!r}; the studies are: {', '.join(STUDIES)}.")
    return [f"{arm}-seed{seed} " + " ".join(f"-S {s}" for s in [*settings, f"align.seed={seed}"])
            for seed in range(seeds) for arm, settings in STUDIES[study]["arms"].items()
            if f"{arm}-seed{seed}" not in existing]


def machine() -> str:
    """CPU model and core count, and the GPU if torch sees one: the figures depend on them."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    text = f"{model}, {len(os.sched_getaffinity(0))} cores"
    import torch
    return text + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU")


def collect(revs: list[str]) -> dict:
    """The record of the experiments derived from each commit in `revs` (HEAD if none): an experiment named in two
    commits is taken from the later one in `revs`."""
    found, baselines = {}, []
    for rev in revs or [None]:
        command = [sys.executable, "-m", "dvc", "exp", "show", "--json", *(["--rev", rev] if rev else [])]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"`dvc exp show --json` failed: {done.stderr.strip()} Run it from the repository root.")
        exps, baseline = experiments(json.loads(done.stdout))
        found |= {e["name"]: e for e in exps}
        if baseline:
            baselines.append(baseline[:7])
    if not found:
        raise UserError("dvc exp show lists no finished experiment named <arm>-seed<k>: run `make compare` first "
                        "(or pass --rev with the commit the experiments were run from).")
    found = sorted(found.values(), key=lambda e: (e["arm"], e["seed"]))
    dates = [e.pop("date") for e in found]
    return {"machine": machine(), "date": max(d for d in dates if d)[:10] if any(dates) else
            datetime.now(timezone.utc).date().isoformat(), "revision": ", ".join(baselines), "experiments": found}


# -- pure formatting

def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value: one seed says nothing about the spread)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def pm(values: list[float], digits: int = 3) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f} ± {'–' if sd is None else f'{sd:.{digits}f}'}"


def noise_interval(values: list[float], lows: list[float], highs: list[float]) -> tuple[float, float]:
    """95% interval of a method's mean over seeds, counting both noises: the seeds' standard error sd/sqrt(n), and
    the prompts' standard error (the runs' mean interval half-width / 1.96), which averaging over seeds does not
    shrink, since every seed answers the same prompts. mean +- 1.96 sqrt(sd^2/n + se_prompts^2)."""
    mean, sd = mean_sd(values)
    prompts = statistics.fmean(h - lo for lo, h in zip(lows, highs)) / 2 / Z95
    half = Z95 * math.sqrt((sd or 0.0) ** 2 / len(values) + prompts ** 2)
    return mean - half, mean + half


def inside_noise(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two methods' noise intervals overlap: their difference is not established (conservative: it ignores that
    both answer the same prompts)."""
    return a[0] <= b[1] and b[0] <= a[1]


def arm(e: dict) -> str:
    """An experiment's arm (records written before studies existed carry only its name)."""
    return e.get("arm") or NAME.match(e["name"])["arm"]


def summarize(exps: list[dict], judge: str) -> list[dict]:
    """One row per arm, best mean `<judge>_win_rate` first, with the values of each key over its seeds (keys that
    every seed has)."""
    arms = {}
    for e in exps:
        arms.setdefault(arm(e), []).append(e["metrics"])
    rows = []
    for name, runs in arms.items():
        values = {key: [run[key] for run in runs] for key in runs[0] if all(key in run for run in runs)}
        key = f"{judge}_win_rate"
        interval = noise_interval(values[key], values[f"{key}_ci_low"], values[f"{key}_ci_high"])
        rows.append({"method": name, "seeds": len(runs), "values": values, "interval": interval})
    return sorted(rows, key=lambda r: -statistics.fmean(r["values"][f"{judge}_win_rate"]))


def rate_cell(values: dict, key: str) -> str:
    """`mean ± sd [low, high]`: the bracket is the runs' own 95% interval over prompts, averaged over seeds."""
    low, high = statistics.fmean(values[f"{key}_ci_low"]), statistics.fmean(values[f"{key}_ci_high"])
    return f"{pm(values[key])} [{low:.2f}, {high:.2f}]"


def method_table(rows: list[dict], judge: str) -> list[str]:
    lines = [f"| method | seeds | {judge} win rate vs SFT | vs the method above | length-controlled {judge} win rate "
             "| reward-model win rate | oracle mean, policy | KL(policy \\|\\| SFT) | answer length | gate passed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, row in enumerate(rows):
        v = row["values"]
        versus = "" if i == 0 else ("inside the noise" if inside_noise(rows[i - 1]["interval"], row["interval"])
                                    else "lower")
        oracle = pm(v["oracle_mean_policy"]) if "oracle_mean_policy" in v else "n/a"
        passed = sum(bool(g) for g in v["gate_passed"])
        lines.append(f"| {row['method']} | {row['seeds']} | {rate_cell(v, f'{judge}_win_rate')} | {versus} "
                     f"| {rate_cell(v, f'{judge}_win_rate_lc')} | {rate_cell(v, 'rm_win_rate')} | {oracle} "
                     f"| {pm(v['kl_policy_sft'], 2)} | {pm(v['length_policy'], 1)} | {passed} of {row['seeds']} |")
    return lines


DEGENERATION = [("repetition", "repeated 4-grams", 3), ("distinct2", "distinct-2", 3),
                ("empty_share", "empty", 3), ("cutoff_share", "cut off", 3),
                ("fluency_perplexity", "perplexity under SFT", 2)]


def degeneration_table(rows: list[dict]) -> list[str]:
    """The policy's degeneration figures per method, with the SFT model's (the same in every run) first."""
    present = [d for d in DEGENERATION if f"{d[0]}_policy" in rows[0]["values"]]
    lines = ["| model | " + " | ".join(title for _, title, _ in present) + " |",
             "| --- |" + " --- |" * len(present)]
    sft = rows[0]["values"]
    lines.append("| SFT | " + " | ".join(f"{statistics.fmean(sft[f'{key}_sft']):.{digits}f}"
                                        if f"{key}_sft" in sft else "n/a" for key, _, digits in present) + " |")
    for row in rows:
        lines.append(f"| {row['method']} | " + " | ".join(pm(row["values"][f"{key}_policy"], digits)
                                                         for key, _, digits in present) + " |")
    return lines


def study_table(rows: list[dict], judge: str) -> list[str]:
    """A study's arms side by side: win rates under the judge and the reward model, their gap, KL, length and, where
    the runs report it, the reward models' disagreement on the policy's answers."""
    uncertain = all("rm_std_policy" in r["values"] for r in rows) and any(any(r["values"]["rm_std_policy"])
                                                                         for r in rows)  # an ensemble ran
    lines = [f"| arm | seeds | {judge} win rate vs SFT | reward-model win rate | gap (reward model - {judge}) "
             "| KL(policy \\|\\| SFT) | answer length |" + (" ensemble std, policy (SFT) |" if uncertain else ""),
             "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if uncertain else "")]
    for row in rows:
        v = row["values"]
        gap = [r - j for r, j in zip(v["rm_win_rate"], v[f"{judge}_win_rate"])] if judge != "rm" else [0.0]
        line = (f"| {row['method']} | {row['seeds']} | {rate_cell(v, f'{judge}_win_rate')} "
                f"| {rate_cell(v, 'rm_win_rate')} | {pm(gap)} | {pm(v['kl_policy_sft'], 2)} "
                f"| {pm(v['length_policy'], 1)} |")
        if uncertain:
            line += f" {pm(v['rm_std_policy'])} ({statistics.fmean(v['rm_std_sft']):.3f}) |"
        lines.append(line)
    return lines


def studies(exps: list[dict], judge: str) -> list[str]:
    """A section per study of STUDIES (but the method comparison) whose arms all have runs."""
    lines = []
    for name, study in STUDIES.items():
        chosen = [e for e in exps if arm(e) in study["arms"]]
        if name == "methods" or {arm(e) for e in chosen} != set(study["arms"]):
            continue
        lines += ["", f"## {study['title']}", "", study["text"], f"`make study STUDY={name}`.", "",
                  *study_table(summarize(chosen, judge), judge)]
    return lines


def render(record: dict) -> str:
    """docs/results.md from the committed record."""
    exps = record["experiments"]
    judge = "oracle" if all("oracle_win_rate" in e["metrics"] for e in exps) else "rm"
    rows = summarize([e for e in exps if arm(e) in METHODS], judge)
    first = exps[0]["metrics"]
    head = [
        "# Results",
        "",
        "Generated by `make report` (`python -m rlhf.report --write`) from the experiments of `make compare` and",
        "`make study` (their record: `metrics/experiments.json`); do not edit by hand.",
        "",
        f"- machine: {record['machine']}",
        f"- date: {record['date']}",
        f"- git revision: `{record['revision']}` (the experiments' baseline commit or commits), default params,",
        "  held-out validation prompts",
        f"- SFT: mean oracle reward {first.get('oracle_mean_sft', float('nan')):.3f}, answer length "
        f"{first['length_sft']:.1f} tokens",
        "",
        "## Methods against SFT",
        "",
        f"Sorted by mean {judge} win rate. `mean ± sd` is over align seeds (training noise); the bracket is each run's",
        "95% interval over the validation prompts (Wilson for raw rates, paired bootstrap for length-controlled ones),",
        "averaged over seeds. \"inside the noise\": the difference to the method above is smaller than the two",
        "noises together (their 95% intervals of the mean, seeds and prompts counted, overlap), so the order of",
        "those two is not established. Win rates count ties apart. Length-controlled: the win probability at zero",
        "length difference (logistic regression of win on the length difference).",
        "",
    ]
    missing = [m for m in METHODS if m not in {r["method"] for r in rows}]
    if missing:
        head.append(f"Not in this record (no `<method>-seed<k>` experiment ran): {', '.join(missing)}.")
        head.append("")
    tail = ["", "## Degeneration (policy answers)", "",
            "Mean ± sd over seeds; the SFT row is the same in every run.", ""]
    return "\n".join(head + method_table(rows, judge) + tail + degeneration_table(rows) + studies(exps, judge)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {INPUT} and {OUTPUT}")
    parser.add_argument("--render", action="store_true", help=f"write {OUTPUT} from the committed {INPUT}, no DVC")
    parser.add_argument("--rev", action="append", default=[],
                        help="a commit the experiments were run from (dvc exp show --rev), repeatable; default HEAD")
    parser.add_argument("--plan", metavar="STUDY", help=f"print the experiments to queue: {', '.join(STUDIES)}")
    parser.add_argument("--seeds", type=int, default=3, help="align seeds per arm, for --plan")
    args = parser.parse_args()
    try:
        if args.plan:
            listed = subprocess.run([sys.executable, "-m", "dvc", "exp", "list", "--name-only"], capture_output=True,
                                    text=True).stdout.split()
            print("\n".join(plan(args.plan, args.seeds, set(listed))))
            return
        record = json.loads(INPUT.read_text()) if args.render else collect(args.rev)
        text = render(record)
        if args.write:
            INPUT.write_text(json.dumps(record, indent=1) + "\n")
        if args.write or args.render:
            OUTPUT.write_text(text)
        print(text)
    except UserError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
