"""check: validate params.yaml before DVC resolves `rlhf/methods/${method}.py` in the align stage's deps.

    python -m stages.check

With `method: ORPO`, DVC would otherwise report a missing file, rlhf/methods/ORPO.py, and never run the check in
rlhf/config.py that names the allowed values. Every stage runs after this one (fetch depends on its output), so this
message comes first. Writes `checked`, a constant text: a new `method` reruns this stage (a second), never fetch.

Reads and writes the paths in paths.yaml; give any of them another place on the command line (`--help` lists them).
"""
from rlhf import config, paths
from rlhf.io import run


def main():
    config.run(config.load(), paths.from_command_line(__doc__))


if __name__ == "__main__":
    run(main)
