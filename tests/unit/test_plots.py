"""`make plots`: the plots dvc.yaml defines come out as real PNG images, drawn offline, each curve once."""
import struct

import yaml

from tests.conftest import REPO
from rlhf import plots
from rlhf.paths import interpolate

DEFINITIONS = yaml.safe_load(interpolate((REPO / "dvc.yaml").read_text()))["plots"]
TOP_LEVEL = [next(iter(p)) for p in DEFINITIONS]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def workspace_with_every_curve(root):
    """A DVC project in `root` with this repo's dvc.yaml, paths.yaml and plot templates, and three rows of made-up
    data in every file the plot definitions read (the real curves are DVC outputs, in the cache, not in git)."""
    import json
    import shutil
    import subprocess

    for name in ("dvc.yaml", "paths.yaml", "params.yaml", ".dvc/config", ".dvc/plots"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, root / name)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    columns = {}
    for definition in DEFINITIONS:
        spec = next(iter(definition.values()))
        x = spec["x"] if isinstance(spec["x"], str) else next(iter(spec["x"].values()))
        for file, fields in spec["y"].items():
            columns.setdefault(file, {x}).update([fields] if isinstance(fields, str) else fields)
    for file, names in columns.items():
        rows = [{name: float(i + len(name) % 3) for name in sorted(names)} for i in range(3)]
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        if file.endswith(".json"):
            (root / file).write_text(json.dumps([{**row, "method": "dpo", "judge": "oracle"} for row in rows]))
        else:
            (root / file).write_text("\n".join("\t".join(map(str, r)) for r in
                                               [sorted(names)] + [[row[n] for n in sorted(names)] for row in rows]))
    return root


def test_make_plots_draws_each_curated_plot_once_as_an_image(tmp_path, monkeypatch):
    """Renders every curated plot of dvc.yaml from a workspace holding all their files. Catches: a stage's `plots:`
    entry drawing a curve a second time (or every logged key), a blank or non-image output, a plot silently
    missing."""
    monkeypatch.chdir(workspace_with_every_curve(tmp_path / "project"))
    drawn, skipped = plots.specs([])
    assert set(drawn) == set(TOP_LEVEL) and not skipped, "only the curated plots of dvc.yaml are drawn, each one"
    assert "SFT loss (train, validation)" in drawn and "Reward model accuracy (train, validation)" in drawn
    result = plots.render(tmp_path / "plots", [])
    assert sorted(result["files"].values()) == sorted(drawn)
    for name in result["files"]:
        width, height = png_size(tmp_path / "plots" / name)
        assert width > 300 and height > 300
    index = (tmp_path / "plots" / "index.html").read_text()
    assert all(f'src="{name}"' in index for name in result["files"])


def test_frontier_labels_every_experiment():
    """The reward-against-KL plot puts one point and one text label per revision (experiment) on the chart."""
    from dvc_render.vega_templates import get_template

    template = get_template("frontier", str(REPO / ".dvc" / "plots"))
    marks = {layer["mark"]["type"]: layer["encoding"] for layer in template.content["layer"]}
    assert marks["text"]["text"]["field"] == "rev" and marks["point"]["color"]["field"] == "rev"


def test_a_missing_revision_is_a_clear_error(tmp_path, monkeypatch):
    import pytest

    from rlhf.io import UserError

    monkeypatch.chdir(REPO)
    with pytest.raises(UserError, match="dvc exp show"):
        plots.render(tmp_path / "plots", ["no-such-experiment-xyz"])
    assert not (tmp_path / "plots").exists()


def test_every_plot_has_axis_titles_and_curves_run_on_the_optimizer_step():
    for definition in DEFINITIONS:
        title, spec = next(iter(definition.items()))
        assert spec.get("x_label") and spec.get("y_label"), f"{title}: axis titles (x_label, y_label) in dvc.yaml"
        if spec["x"] == "step":
            assert spec["x_label"] == "optimizer step", title
    hist = next(spec for d in DEFINITIONS for t, spec in d.items() if t.startswith("Reward distribution"))
    assert hist["y_label"] == "answers"


def test_series_are_named_in_words_and_the_reward_axis_names_its_judge(tmp_path, monkeypatch):
    """Drawn from a workspace holding every curve: a train/validation pair's legend says "train" and "validation",
    the histogram's "SFT" and "policy", PPO's score "PPO score"; no file name reaches a legend. The reward axes say
    "oracle reward" when the evaluation judged with the oracle."""
    monkeypatch.chdir(workspace_with_every_curve(tmp_path / "project"))
    drawn, _ = plots.specs([])
    judge = plots.judge_of(drawn)
    assert judge == "oracle"
    specs = {title: plots.readable(spec, judge) for title, spec in drawn.items()}
    legend = {title: spec["encoding"].get("strokeDash", {}).get("scale", {}).get("domain")
              for title, spec in specs.items()}
    assert sorted(legend["SFT loss (train, validation)"]) == ["train", "validation"]
    assert sorted(legend["Alignment preference accuracy (train, validation)"]) == ["train", "validation"]
    assert sorted(legend["Reward distribution of SFT and policy answers (validation prompts)"]) == ["SFT", "policy"]
    assert sorted(legend["Policy reward on its own samples (PPO score, GRPO reward)"]) == ["GRPO reward", "PPO score"]
    for title, spec in specs.items():
        field = spec["encoding"].get("strokeDash", {}).get("field")
        assert not field or not any(".tsv" in str(row[field]) for row in spec["data"]["values"]), title
    hist = specs["Reward distribution of SFT and policy answers (validation prompts)"]
    assert {e["x"]["title"] for e in plots.encodings(hist) if "x" in e} == {"oracle reward of an answer"}
    frontier = next(spec for title, spec in specs.items() if title.startswith("Reward against KL"))
    assert frontier["encoding"]["y"]["title"].startswith("oracle reward")


def test_dvclive_points_sit_at_the_optimizer_step(tmp_path):
    """The Trainer's DVCLive callback writes each point at state.global_step (the stock one writes its own log
    counter: 0, 1, 2, ...), and a replayed log-history entry (a resumed run) at the step it carries."""
    from types import SimpleNamespace

    from rlhf import train

    live = train.open_live(tmp_path / "live")
    callback = train.step_callback(live)
    args = SimpleNamespace(to_dict=lambda: {})
    for global_step, logs in ((10, {"loss": 1.0}), (20, {"loss": 0.5}), (20, {"loss": 0.7, "step": 5})):
        state = SimpleNamespace(global_step=global_step, is_world_process_zero=True)
        callback.on_log(args, state, None, logs=logs)
    rows = (tmp_path / "live/plots/metrics/loss.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in rows[1:]] == ["10", "20", "5"]
    assert not (tmp_path / "live/plots/metrics/step.tsv").exists()
