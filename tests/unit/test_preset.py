"""Presets (configs/*.yaml, applied by rlhf.preset) cannot drift from params.yaml: every key exists and the result
validates; applying one changes only the named values and keeps every comment."""
import re

import pytest
import yaml

from rlhf import config, preset
from rlhf.io import UserError
from tests.conftest import REPO

PRESETS = sorted(p for p in (REPO / "configs").glob("*.yaml"))


def test_there_is_a_real_model_preset():
    assert REPO / "configs" / "real-model.yaml" in PRESETS


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_preset_key_exists_and_the_result_validates(path, tmp_path):
    """Applied to the committed params.yaml, the preset gives exactly the parsed params with its values set, and
    rlhf.config accepts it."""
    overrides = preset.read_preset(path)
    text, changes = preset.apply((REPO / "params.yaml").read_text(), overrides)
    assert [key for key, _, _ in changes] == [k for k in flatten_order(overrides)]
    expected = config._override(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    assert yaml.safe_load(text) == expected
    (tmp_path / "params.yaml").write_text(text)
    params = config.load(tmp_path / "params.yaml")
    for key, value in overrides.items():
        node = params
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value, key


def flatten_order(overrides: dict) -> list:
    """The preset's keys in params.yaml's order (apply reports changes in file order)."""
    order = list(preset.flatten(yaml.safe_load((REPO / "params.yaml").read_text())))
    return sorted(overrides, key=order.index)


def test_apply_keeps_comments_and_layout():
    text = "a: 1      # one\nb:        # section\n  c: x    # nested\n  d: 2    # other\n"
    new, changes = preset.apply(text, {"b.c": 0.5, "a": 3})
    assert new == "a: 3      # one\nb:        # section\n  c: 0.5  # nested\n  d: 2    # other\n"
    assert changes == [("a", "1", "3"), ("b.c", "x", "0.5")]


def test_a_key_params_yaml_lacks_is_refused_by_name():
    with pytest.raises(UserError, match=r"sft\.learning_rat\b"):
        preset.apply((REPO / "params.yaml").read_text(), {"sft.learning_rat": 1e-4})


def test_args_mode_prints_dvc_options(capsys):
    preset.main([str(REPO / "configs" / "real-model.yaml"), "--params", str(REPO / "params.yaml"), "--args"])
    options = capsys.readouterr().out.split()
    assert options[0] == "-S" and "sft.learning_rate=0.0001" in options
    assert all(re.fullmatch(r"[\w.]+=\S+", o) for o in options[1::2])


def test_an_invalid_value_is_refused_before_params_yaml_is_written(tmp_path):
    """rlhf.config's range check runs on the result: a negative learning rate stops it, and params.yaml is unchanged."""
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  learning_rate: -1.0\n")
    with pytest.raises(config.ConfigError, match="sft.learning_rate"):
        preset.main([str(bad), "--params", str(params)])
    assert params.read_text() == (REPO / "params.yaml").read_text()
