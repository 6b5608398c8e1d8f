"""The plots dvc.yaml defines, drawn to PNG files that open offline.

    python -m rlhf.plots --out plots                  # this workspace (make plots)
    python -m rlhf.plots --out plots dpo orpo ppo     # several revisions or experiments on one plot (make compare)

DVC fills its vega-lite templates with the data (`dvc plots show --json`, or `dvc plots diff --json` for several
revisions); vl-convert, which bundles the vega renderer, draws each one with no browser and no network. DVC's own
HTML loads vega from a CDN, so offline it shows an empty page. Next to the PNGs, index.html shows them all.

Axis titles come from dvc.yaml (`x_label`, `y_label`); what DVC's templates cannot say, `readable` adds: series named
in words ("train", "validation", "SFT", "policy") instead of file names such as `eval/loss.tsv`, and which reward the
reward axes show (the oracle on a built-in task, otherwise the reward model; the evaluate stage records it).
"""
import argparse
import html
import json
import re
import subprocess
import sys
from pathlib import Path

from rlhf.io import UserError, atomic_dir, run


def specs(revisions: list[str]) -> tuple[dict[str, dict], dict[str, str]]:
    """({title: filled vega-lite spec}, {title: why it was not drawn}) for every plot in dvc.yaml."""
    command = ["dvc", "plots", "diff", *revisions, "--json"] if revisions else ["dvc", "plots", "show", "--json"]
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"`{' '.join(command)}` failed: {done.stderr.strip()} Run it from the repository root, after "
                        "`dvc repro` (or `dvc pull`), with revisions that exist (`dvc exp show` lists experiments).")
    result = json.loads(done.stdout)
    skipped = {}
    for error in result.get("errors", []):
        skipped.setdefault(error["name"], f"{error['source']} not in {error['rev']} (not logged by this run)")
    drawn = {}
    for title, items in result["data"].items():
        vega = [item for item in items if item.get("type") == "vega"]
        if vega:
            drawn[title] = vega[0]["content"]
        else:
            skipped.setdefault(title, "no data")
    return drawn, {title: why for title, why in skipped.items() if title not in drawn}


# Series that are not a train/validation pair, by the field DVC read them from.
WORDS = {"sft": "SFT", "policy": "policy", "score": "PPO score", "reward": "GRPO reward", "policy_loss": "policy loss",
         "value_loss": "value loss"}
JUDGES = {"oracle": "oracle reward", "reward_model": "reward-model score"}


def series_name(value: str, domain: list[str]) -> str:
    """A series' legend entry in words: `eval/<key>.tsv` is "validation" and its partner "train"; otherwise the
    field's name (`score.tsv::score` -> "PPO score", `sft` -> "SFT")."""
    if value.startswith("eval/"):
        return "validation"
    if any(other.startswith("eval/") for other in domain):
        return "train"
    field = value.split("::")[-1].removesuffix(".tsv").rsplit("/", 1)[-1]
    return WORDS.get(field, field.replace("_", " "))


def readable(spec: dict, judge: str | None) -> dict:
    """A filled vega-lite spec with its series named in words, a one-run colour legend dropped, and "reward" in the
    title of an axis of the evaluation's `reward` field made the judge's name (changed in place and returned)."""
    encoding = spec.get("encoding", {})
    dash = encoding.get("strokeDash")
    if dash and "scale" in dash:
        domain = dash["scale"]["domain"]
        names = {value: series_name(value, domain) for value in domain}
        dash["scale"]["domain"] = [names[v] for v in domain]
        dash["legend"] = {**dash.get("legend", {}), "title": None}
        for row in spec["data"]["values"]:
            row[dash["field"]] = names.get(row[dash["field"]], row[dash["field"]])
    color = encoding.get("color", {})
    if len(color.get("scale", {}).get("domain", [])) == 1:
        color["legend"] = None  # the workspace alone: its name says nothing
    for part in encodings(spec) if judge else []:  # every layer's: vega-lite joins differing titles with commas
        for axis in ("x", "y"):
            title = part.get(axis, {}).get("title")
            if part.get(axis, {}).get("field") == "reward" and isinstance(title, str) and title.startswith("reward"):
                part[axis]["title"] = title.replace("reward", JUDGES.get(judge, judge), 1)
    return spec


def encodings(spec: dict) -> list[dict]:
    """The `encoding` of a spec and of all its layers, nested ones included."""
    found = [spec["encoding"]] if "encoding" in spec else []
    for layer in spec.get("layer", []):
        found += encodings(layer)
    return found


def judge_of(drawn: dict[str, dict]) -> str | None:
    """Which reward the evaluation plots show, as the evaluate stage recorded it in the frontier's data."""
    for spec in drawn.values():
        for row in spec.get("data", {}).get("values", []):
            if isinstance(row, dict) and "judge" in row:
                return row["judge"]
    return None


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:80]


def render(out: str | Path, revisions: list[str]) -> dict:
    """Write one PNG per plot and an index.html into `out` (replaced whole); returns {file: title} and the skips."""
    import vl_convert

    drawn, skipped = specs(revisions)
    judge = judge_of(drawn)
    drawn = {title: readable(spec, judge) for title, spec in drawn.items()}
    files = {}
    with atomic_dir(out) as tmp:
        for title, spec in drawn.items():
            name = f"{slug(title)}.png"
            (tmp / name).write_bytes(vl_convert.vegalite_to_png(spec, scale=2))
            files[name] = title
        rows = "\n".join(f'<h3>{html.escape(t)}</h3><img src="{n}" alt="{html.escape(t)}">' for n, t in files.items())
        notes = "".join(f"<li>{html.escape(t)}: {html.escape(why)}</li>" for t, why in skipped.items())
        (tmp / "index.html").write_text(f"<!doctype html><meta charset='utf-8'><title>plots</title>\n{rows}\n"
                                        f"<h3>Not drawn</h3><ul>{notes}</ul>\n")
    return {"files": files, "skipped": skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the PNG files and index.html (replaced)")
    parser.add_argument("revisions", nargs="*", help="git revisions or experiment names (none: the workspace)")
    args = parser.parse_args()
    result = render(args.out, args.revisions)
    for name, title in result["files"].items():
        print(f"{args.out}/{name}: {title}")
    for title, why in result["skipped"].items():
        print(f"not drawn: {title} ({why})")


if __name__ == "__main__":
    run(main)
