"""Benchmark: the README's two quick-start commands as a new user runs them, in a fresh clone of HEAD.

    python -m bench.quickstart [--out metrics/bench.json]   # on a quiet machine: section `quickstart`
    python -m bench.quickstart --load 1                      # beside 1 busy process: section `quickstart_loaded`

`make repro` (every stage of the default, DVC's own work included), then `make test`, in a clone whose `.venv` is a
link to this checkout's (so the pip install of a first run is left out), with `../shared` beside it as CI has it.
Each gets its wall time, its CPU time (all its processes: what a busy machine stretches, not shrinks) and the share
of the cores that other processes used.
Writes the `quickstart` section, from which `python -m bench.report --write` makes the README's quick-start table.
"""
import argparse
import multiprocessing
import re
import tempfile
from pathlib import Path

from bench import machine, pipeline
from bench.sweep import prepare_clone
from rlhf.io import read_json, write_json

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"=+ (.*(?:passed|failed).*) in [\d.]+s")  # pytest's last line, less its time


def spin():
    """A busy process: what another user's job does to the machine."""
    while True:
        pass


def run(tmp: Path) -> dict:
    root = prepare_clone("HEAD", tmp / "repo")
    if (REPO.parent / "shared").is_dir():  # as CI has it: the tests that read ../shared/data run, not skip
        (tmp / "shared").symlink_to(REPO.parent / "shared")
    section = {}
    for target in ("repro", "test"):
        log = tmp / f"{target}.log"
        # -o: the clone's .venv is this checkout's, already installed; make must not reinstall it
        section[target] = pipeline.timed(["make", "-o", ".venv/.installed", target], root, log)
    found = SUMMARY.findall((tmp / "test.log").read_text())
    if found:
        section["test"]["summary"] = found[-1]
    return section


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "metrics/bench.json")
    parser.add_argument("--load", type=int, default=0, help="busy processes to run beside the commands (default 0)")
    args = parser.parse_args()
    busy = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.load)]
    for process in busy:
        process.start()
    if busy:  # the busy processes are the load: measure anyway instead of waiting for quiet
        machine.MAX_WAIT_SECONDS = 0
    try:
        with tempfile.TemporaryDirectory(prefix="rlhf-quickstart-") as tmp:
            section = run(Path(tmp))
    finally:
        for process in busy:
            process.terminate()
    report = read_json(args.out) if args.out.is_file() else {}
    key = "quickstart_loaded" if busy else "quickstart"
    report[key] = {**section, "load_processes": args.load, **machine.stamp()}
    write_json(args.out, report)
    print(section)


if __name__ == "__main__":
    main()
