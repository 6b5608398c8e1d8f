"""The plots dvc.yaml defines, drawn to PNG files that open offline.

    python -m rlhf.plots --out plots                  # this workspace (make plots)
    python -m rlhf.plots --out plots dpo orpo ppo     # several revisions or experiments on one plot (make compare)

DVC fills its vega-lite templates with the data (`dvc plots show --json`, or `dvc plots diff --json` for several
revisions); vl-convert, which bundles the vega renderer, draws each one with no browser and no network. DVC's own
HTML loads vega from a CDN, so offline it shows an empty page. Next to the PNGs, index.html shows them all.
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


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:80]


def render(out: str | Path, revisions: list[str]) -> dict:
    """Write one PNG per plot and an index.html into `out` (replaced whole); returns {file: title} and the skips."""
    import vl_convert

    drawn, skipped = specs(revisions)
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
