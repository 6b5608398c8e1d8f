"""The stage paths: one definition, paths.yaml at the repository root, read by dvc.yaml (as `vars`), the stage
scripts, the tests and bench/. A stage script builds its `Paths` once from the command line, where any path can be
given another place (`--tokenized DIR`); relative paths start at the directory the stage runs in."""
import argparse
import dataclasses
from pathlib import Path

import yaml

FILE = Path(__file__).resolve().parents[1] / "paths.yaml"


@dataclasses.dataclass(frozen=True)
class Paths:
    checked: Path
    fetched: Path
    prepared: Path
    base: Path
    tokenized: Path
    sft: Path
    reward: Path
    reference: Path
    sft_answers: Path
    policy: Path
    export: Path
    data_metrics: Path
    tokenize_metrics: Path
    sft_metrics: Path
    reward_metrics: Path
    align_metrics: Path
    eval_metrics: Path
    samples: Path
    eval_plots: Path
    sft_live: Path
    reward_live: Path
    align_live: Path
    sft_checkpoints: Path
    reward_checkpoints: Path
    align_checkpoints: Path

    def under(self, root: str | Path) -> "Paths":
        """The same layout inside `root` (a test's or benchmark's project folder)."""
        return Paths(**{name: Path(root) / path for name, path in dataclasses.asdict(self).items()})

    def replace(self, **changes) -> "Paths":
        return dataclasses.replace(self, **{k: Path(v) for k, v in changes.items()})


def layout() -> Paths:
    """The paths as paths.yaml defines them, relative."""
    return Paths(**{name: Path(path) for name, path in yaml.safe_load(FILE.read_text())["paths"].items()})


def from_command_line(description: str, argv: list[str] | None = None) -> Paths:
    """paths.yaml's layout with any path given on the command line (`--sft-answers DIR`) put in its place."""
    default = layout()
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, path in dataclasses.asdict(default).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=Path, default=path, metavar="PATH",
                            help=f"default: {path}")
    return Paths(**vars(parser.parse_args(argv)))


def clear_stale_outputs(paths: Paths) -> None:
    """Delete dead runs' temporary folders beside every stage output. Each stage sweeps the folder it writes into
    (rlhf.io.clear_stale), but when DVC restores every stage from its run cache no stage runs, so a killed run's
    half-written folder would stay: `make repro` and `make exp` call this after DVC (`python -m rlhf.paths`)."""
    from rlhf.io import clear_stale

    for folder in sorted({Path(path).parent for path in dataclasses.asdict(paths).values()}):
        if folder.is_dir():
            clear_stale(folder)


def interpolate(text: str) -> str:
    """`text` (dvc.yaml) with every ${paths.<name>} replaced by its path, as DVC's templating does: for the tests and
    benchmarks that read dvc.yaml."""
    import re

    paths = {name: str(path) for name, path in dataclasses.asdict(layout()).items()}
    return re.sub(r"\$\{paths\.(\w+)\}", lambda m: paths[m.group(1)], text)


if __name__ == "__main__":
    clear_stale_outputs(layout())
