"""`make plots`: the plots dvc.yaml defines come out as real PNG images, drawn offline, each curve once."""
import struct

import yaml

from conftest import REPO
from rlhf import plots

TOP_LEVEL = [next(iter(p)) for p in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_make_plots_draws_each_curated_plot_once_as_an_image(tmp_path, monkeypatch):
    """Renders the committed workspace (the curves and evaluation data in git). Catches: a stage's `plots:` entry
    drawing a curve a second time (or every logged key), a blank or non-image output, a plot silently missing."""
    monkeypatch.chdir(REPO)
    drawn, skipped = plots.specs([])
    assert set(drawn) | set(skipped) == set(TOP_LEVEL), "only the curated plots of dvc.yaml are drawn"
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
