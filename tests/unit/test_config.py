"""params.yaml validation: every mistake is caught before work starts, with the key named."""
import dataclasses
import re

import pytest
import yaml

from rlhf import config
from rlhf.config import ConfigError
from tests.conftest import REPO


def test_repo_params_load_and_cover_every_field():
    """params.yaml sets every config field explicitly, so no hidden default in code decides a result."""
    params = config.load(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())

    def walk(obj, node, prefix):
        for f in dataclasses.fields(obj):
            assert f.name in node, f"params.yaml lacks {prefix}{f.name}"
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, node[f.name], f"{prefix}{f.name}.")

    walk(params, raw, "")


def test_config_has_no_defaults():
    """params.yaml is the only home of a default. Defaults in the dataclasses had drifted from it (18 of them, e.g.
    model.pretrain.max_steps 300 against 1000, every eval.gate threshold null), and tests that built config.Params()
    ran settings the pipeline never runs; tests now start from conftest.repo_params()."""
    sections = [obj for obj in vars(config).values() if isinstance(obj, type) and dataclasses.is_dataclass(obj)]
    assert config.Params in sections and config.Gate in sections and config.Training in sections
    in_code = [f"{cls.__name__}.{f.name}" for cls in sections for f in dataclasses.fields(cls)
               if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert not in_code, f"defaults in rlhf/config.py: {in_code}; write the value in params.yaml instead"


@pytest.mark.parametrize("key", ["seed", "model.pretrain.max_steps", "lora.r", "eval.gate.max_kl", "data.builtin"])
def test_missing_key_is_named_and_says_where_to_copy_it_from(tmp_path, key):
    """A params.yaml from an older version of the project lacks newer keys: the error names each one (nested
    sections, null-able fields and whole sections alike) rather than running on a value nobody chose."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    *parents, last = key.split(".")
    node = raw
    for name in parents:
        node = node[name]
    del node[last]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match=rf"missing key\(s\) {re.escape(key)}\. .*Copy the missing line\(s\), with "
                                          r"their comments, from the repository's params\.yaml"):
        config.load(path)


def test_overrides_are_validated_like_the_file(params_file):
    """load(path, overrides) (what tests and the benchmark use) gives what the same keys written in the file give,
    and checks them the same way."""
    overrides = {"sft.max_steps": 7, "eval.gate.max_kl": None, "data.columns": {"prompt": "q"}}
    assert config.load(REPO / "params.yaml", overrides) == config.load(params_file(overrides))
    with pytest.raises(ConfigError, match=r"sft\.max_steps = -2 is out of range"):
        config.load(REPO / "params.yaml", {"sft.max_steps": -2})


def test_misspelled_key_names_key_and_suggests(params_file):
    path = params_file({"data.sampel_ratio": 0.5})
    with pytest.raises(ConfigError, match=r"unknown key 'data\.sampel_ratio'.*Did you mean 'data\.sample_ratio'"):
        config.load(path)


def test_unknown_top_level_key(params_file):
    with pytest.raises(ConfigError, match=r"unknown key 'seeed'.*Allowed keys in the top level: seed"):
        config.load(params_file({"seeed": 1}))


@pytest.mark.parametrize("key, value, message", [
    ("seed", "zero", r"seed = 'zero' has the wrong type; expected an integer"),
    ("seed", True, r"seed = True has the wrong type"),
    ("data.sample_ratio", 1.5, r"data\.sample_ratio = 1\.5 is out of range; allowed: 0\.0 < data\.sample_ratio <= 1"),
    ("data.sample_ratio", 0, r"out of range"),
    ("data.max_rows", 0, r"data\.max_rows = 0 is out of range"),
    ("data.on_bad_rows", "ignore", r"data\.on_bad_rows = 'ignore' is not allowed; choose one of: error, skip"),
    ("method", "dpoo", r"method = 'dpoo' is not allowed; choose one of: dpo, orpo, ppo"),
    ("data.builtin.label_noise", 0.7, r"data\.builtin\.label_noise = 0\.7 is out of range"),
    ("data.columns", {"prompt": 3}, r"data\.columns\.prompt = 3 has the wrong type; expected a string"),
    ("data.columns", {"promt": "q"}, r"data\.columns has unknown key\(s\) \['promt'\]"),
    ("tokenize.overlong", "cut", r"tokenize\.overlong = 'cut' is not allowed"),
    ("prepare.validation_size", 1.0, r"prepare\.validation_size = 1\.0 is a fraction and must be below 1"),
    ("prepare.validation_size", "ten", r"prepare\.validation_size = 'ten' has the wrong type; expected a number or an integer"),
    ("model", "tiny", r"model must be a mapping"),
    ("processing.num_proc", 0, r"processing\.num_proc = 0 is out of range; allowed: 1 <= processing\.num_proc"),
    ("processing.num_proc", "all", r"processing\.num_proc = 'all' has the wrong type; expected an integer or 'auto'"),
    ("processing.batch_size", 0, r"processing\.batch_size = 0 is out of range"),
])
def test_bad_values_name_key_value_and_allowed(params_file, key, value, message):
    with pytest.raises(ConfigError, match=message):
        config.load(params_file({key: value}))


def test_yaml_scientific_notation_without_dot_is_a_number(params_file):
    """PyYAML reads 3e-3 as a string; a float field accepts it."""
    path = params_file()
    path.write_text(path.read_text().replace("learning_rate: 0.003", "learning_rate: 3e-3"))
    assert "3e-3" in path.read_text()
    assert config.load(path).model.pretrain.learning_rate == pytest.approx(3e-3)


def test_validation_size_int_stays_count(params_file):
    assert config.load(params_file({"prepare.validation_size": 50})).prepare.validation_size == 50
    assert isinstance(config.load(params_file({"prepare.validation_size": 0.2})).prepare.validation_size, float)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)
