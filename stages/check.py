"""check: validate `method` before DVC resolves `rlhf/methods/${method}.py` in the align stage's deps.

    python -m stages.check --out data/checked

With `method: ORPO`, DVC would otherwise report a missing file, rlhf/methods/ORPO.py, and never run the check in
rlhf/config.py that names the allowed values. Every stage runs after this one (fetch depends on its output), so
this message comes first. OUT holds a constant text: a new `method` reruns this stage (a second), never fetch.
"""
import argparse
from pathlib import Path

from rlhf import config
from rlhf.io import run


def main():
    parser = argparse.ArgumentParser(description="Validate params.yaml before the pipeline runs.")
    parser.add_argument("--out", required=True, help="output file")
    args = parser.parse_args()
    config.load()  # raises a UserError naming the key and the allowed values
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("params.yaml passed rlhf/config.py's checks\n")  # constant: see the docstring


if __name__ == "__main__":
    run(main)
