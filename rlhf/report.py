"""The method comparison table of docs/results.md, generated from `make compare`'s experiments, never typed by hand.

    python -m rlhf.report            # print the table of the experiments `make compare` ran (from dvc exp show)
    python -m rlhf.report --write    # also write metrics/experiments.json (the input) and docs/results.md (make report)
    python -m rlhf.report --render   # docs/results.md again from the committed metrics/experiments.json, no DVC

`collect` reads `dvc exp show --json` and keeps, of every experiment named `<method>-seed<k>` (as `make compare`
names them), its method, align.seed and metrics/eval.json, with the machine, date and git revision. That record is
committed, so the check that docs/results.md matches it needs no DVC experiments (tests/test_report.py). `render`
turns the record into markdown; the rest are pure formatting functions.

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

from rlhf.io import UserError

INPUT = Path("metrics/experiments.json")
OUTPUT = Path("docs/results.md")
NAME = re.compile(r"^(?P<method>[a-z]+)-seed(?P<seed>\d+)$")  # make compare's experiment names
Z95 = 1.959964


# -- collecting the record (DVC, git, the machine)

def experiments(show: list[dict]) -> tuple[list[dict], str | None]:
    """The `<method>-seed<k>` experiments in `dvc exp show --json` output, as {name, method, seed, metrics}, sorted,
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
                found.append({"name": exp["name"], "method": params["method"], "seed": params["align"]["seed"],
                              "date": data.get("timestamp"), "metrics": metrics})
                baseline = commit["rev"]
    return sorted(found, key=lambda e: (e["method"], e["seed"])), baseline


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


def collect(rev: str | None) -> dict:
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json", *(["--rev", rev] if rev else [])]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"`dvc exp show --json` failed: {done.stderr.strip()} Run it from the repository root.")
    found, baseline = experiments(json.loads(done.stdout))
    if not found:
        raise UserError("dvc exp show lists no finished experiment named <method>-seed<k>: run `make compare` first "
                        "(or pass --rev with the commit the experiments were run from).")
    dates = [e.pop("date") for e in found]
    return {"machine": machine(), "date": max(d for d in dates if d)[:10] if any(dates) else
            datetime.now(timezone.utc).date().isoformat(), "revision": baseline[:7], "experiments": found}


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


def summarize(exps: list[dict], judge: str) -> list[dict]:
    """One row per method, best mean `<judge>_win_rate` first, with the values of each key over its seeds."""
    methods = {}
    for e in exps:
        methods.setdefault(e["method"], []).append(e["metrics"])
    rows = []
    for method, runs in methods.items():
        values = {key: [run[key] for run in runs] for key in runs[0]}
        key = f"{judge}_win_rate"
        interval = noise_interval(values[key], values[f"{key}_ci_low"], values[f"{key}_ci_high"])
        rows.append({"method": method, "seeds": len(runs), "values": values, "interval": interval})
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


def render(record: dict) -> str:
    """docs/results.md from the committed record."""
    exps = record["experiments"]
    judge = "oracle" if all("oracle_win_rate" in e["metrics"] for e in exps) else "rm"
    rows = summarize(exps, judge)
    first = exps[0]["metrics"]
    head = [
        "# Results",
        "",
        "Generated by `make report` (`python -m rlhf.report --write`) from the experiments of `make compare` and",
        "`metrics/experiments.json`; do not edit by hand.",
        "",
        f"- machine: {record['machine']}",
        f"- date: {record['date']}",
        f"- git revision: `{record['revision']}` (the experiments' baseline commit), default params, held-out",
        "  validation prompts",
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
    tail = ["", "## Degeneration (policy answers)", "",
            "Mean ± sd over seeds; the SFT row is the same in every run.", ""]
    return "\n".join(head + method_table(rows, judge) + tail + degeneration_table(rows)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {INPUT} and {OUTPUT}")
    parser.add_argument("--render", action="store_true", help=f"write {OUTPUT} from the committed {INPUT}, no DVC")
    parser.add_argument("--rev", help="the commit the experiments were run from (dvc exp show --rev); default HEAD")
    args = parser.parse_args()
    try:
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
