"""Apply a preset, a small YAML file of params overrides (configs/real-model.yaml), to params.yaml.

    python -m rlhf.preset configs/real-model.yaml          # writes the values into params.yaml, printing each change
    python -m rlhf.preset configs/real-model.yaml --args   # prints them as `-S key=value` options for `dvc exp run`

DVC has no "apply a file of overrides" flag (`dvc exp run -S` takes one key at a time), so a preset is either written
into params.yaml, which then keeps every comment and its layout (only the values change), or turned into `-S`
options for one experiment. Every key must already exist in params.yaml, and the result must pass rlhf.config's
validation before anything is written.
"""
import argparse
import re
import sys
import tempfile
from pathlib import Path

import yaml

from rlhf import config
from rlhf.io import UserError

KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>\w+):(?P<rest>.*)$")


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"sft": {"learning_rate": 1e-4}} -> {"sft.learning_rate": 1e-4}; lists and scalars are leaves."""
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        flat.update(flatten(value, dotted + ".") if isinstance(value, dict) else {dotted: value})
    return flat


def scalar(value) -> str:
    """A value as params.yaml writes it on one line (flow style)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").removesuffix("...").strip()


def apply(text: str, overrides: dict, source: str = "params.yaml") -> tuple[str, list[tuple[str, str, str]]]:
    """`text` (params.yaml) with each dotted key of `overrides` given its new value on its own line, comments and
    alignment kept; and the changes as (key, old, new). A key params.yaml lacks is a UserError."""
    lines, changes, stack, found = text.split("\n"), [], [], set()
    for number, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match or line.lstrip().startswith("#"):
            continue
        depth = len(match["indent"])
        stack = [(d, k) for d, k in stack if d < depth] + [(depth, match["key"])]
        dotted = ".".join(k for _, k in stack)
        if dotted not in overrides:
            continue
        rest = match["rest"]
        cut = rest.find(" #")
        old_part, comment = (rest, "") if cut < 0 else (rest[:cut], rest[cut:])
        new = " " + scalar(overrides[dotted])
        if comment:
            new = new.ljust(len(old_part))
        lines[number] = f"{match['indent']}{match['key']}:{new}{comment}"
        changes.append((dotted, old_part.strip(), scalar(overrides[dotted])))
        found.add(dotted)
    missing = sorted(set(overrides) - found)
    if missing:
        raise UserError(f"{source}: the preset names {', '.join(missing)}, which params.yaml does not have. A preset "
                        "may only change keys that exist (see docs/params.md); fix the key's spelling in the preset.")
    return "\n".join(lines), changes


def read_preset(path: Path) -> dict:
    """The preset's overrides, flattened to dotted keys."""
    if not path.is_file():
        raise UserError(f"{path}: no such preset. Presets live in configs/ (for example configs/real-model.yaml).")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise UserError(f"{path}: a preset is a mapping of params.yaml sections to values, like params.yaml itself.")
    return flatten(tree)


def check(text: str) -> None:
    """Validate a would-be params.yaml with rlhf.config (raises its ConfigError naming the key)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(text)
        config.load(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Apply a preset of params overrides to params.yaml.")
    parser.add_argument("preset", type=Path, help="a YAML file of overrides, e.g. configs/real-model.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--args", action="store_true", help="print `-S key=value` options instead of writing")
    args = parser.parse_args(argv)
    overrides = read_preset(args.preset)
    text, changes = apply(args.params.read_text(), overrides, str(args.preset))
    check(text)
    if args.args:
        print(" ".join(f"-S {key}={new}" for key, _, new in changes))
        return
    args.params.write_text(text)
    for key, old, new in changes:
        print(f"{args.params}: {key}: {old} -> {new}" if old != new else f"{args.params}: {key}: {new} (unchanged)")


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        sys.exit(f"error: {err}")
