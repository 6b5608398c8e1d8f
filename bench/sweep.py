"""Benchmark: what a method sweep costs, at one commit, in fresh clones of REV with their own DVC cache:

    python -m bench.sweep [--rev REV] [--key sweep] [--out metrics/bench.json]

1. `dvc repro`: the whole pipeline, every stage run (the wall time a full run costs);
2. `dvc exp run -S method=orpo` and `dvc exp run -S dpo.beta=0.2`, as users type them: one experiment each, with the
   stages they ran and their wall time as a share of the full run;
3. `make compare` in a copy of the clone as step 1 left it (so no experiment of step 2 is restored from DVC's run
   cache): the six methods queued and run as experiments, the table and the plots. The `dpo` experiment equals the
   full run, so DVC restores it; the other five run.

Run it at two commits (e.g. before and after a change) for a before/after figure: both runs must be on a quiet
machine, and each records the share of the cores other processes used. Writes one section (`--key`) of the JSON file
and keeps the others. Takes about 8 minutes on 2 CPU cores.
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench import machine, pipeline
from rlhf.io import write_json

REPO = Path(__file__).resolve().parents[1]


def prepare_clone(rev: str, dst: Path) -> Path:
    """A clone of `rev` with its own DVC cache, whose .venv is this one (no reinstall)."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(dst)], check=True)
    subprocess.run(["git", "checkout", "--quiet", rev], cwd=dst, check=True)
    (dst / ".venv").symlink_to(REPO / ".venv")
    return dst


def run(rev: str, tmp: Path, with_compare: bool = True) -> dict:
    root = prepare_clone(rev, tmp / "repo")
    logs = tmp / "logs"
    logs.mkdir()
    full = pipeline.dvc(root, logs, "full", "repro")
    after_full = {name: (root / name).read_text() for name in ("params.yaml", "dvc.lock")}
    compare = shutil.copytree(root, tmp / "compare", symlinks=True)  # the workspace and cache as the full run left them
    result = {"rev": subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                    check=True).stdout.strip(), "full_repro": full}
    for name, setting in (("exp_run_method_orpo", "method=orpo"), ("exp_run_dpo_beta_0_2", "dpo.beta=0.2")):
        # `dvc exp run` leaves its params and outputs in the workspace: start each one from the full run's state
        for file, text in after_full.items():
            (root / file).write_text(text)
        subprocess.run(["dvc", "checkout", "--force", "--quiet"], cwd=root, check=True, env=pipeline.environment())
        exp = pipeline.dvc(root, logs, name, "exp", "run", "-S", setting)
        result[name] = {**exp, "share_of_full_run": round(exp["wall_seconds"] / full["wall_seconds"], 3)}
    # -o: the clone's .venv is this repository's, already installed; make must not reinstall it
    if with_compare:
        result["make_compare"] = pipeline.timed(["make", "-o", ".venv/.installed", "compare"], compare,
                                                logs / "compare.log")
        result["make_compare"]["experiments_run"] = (logs / "compare.log").read_text().count("Running stage 'align'")
    return result


def main():
    parser = argparse.ArgumentParser(description="Time a full run, two single experiments and `make compare`.")
    parser.add_argument("--rev", default="HEAD", help="commit to measure (default: HEAD)")
    parser.add_argument("--key", default="sweep", help="section of the JSON file to write")
    parser.add_argument("--out", type=Path, default=REPO / "metrics/bench.json")
    parser.add_argument("--no-compare", action="store_true", help="skip `make compare` (keeps an earlier figure)")
    args = parser.parse_args()
    os.environ.update(pipeline.ENV)
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    with tempfile.TemporaryDirectory(prefix="rlhf-sweep-") as tmp:
        report[args.key] = {**report.get(args.key, {}), **run(args.rev, Path(tmp), not args.no_compare),
                           **machine.stamp(git=False)}  # `rev`: the commit measured
    write_json(args.out, report)
    print(json.dumps(report[args.key], indent=2))


if __name__ == "__main__":
    main()
