"""Config, dvc.yaml, scripts and docs cannot drift apart."""
import re
from pathlib import Path

import yaml

from conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
# dvc.yaml templating: ${method} is the value of `method` in params.yaml
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text().replace("${method}", PARAMS["method"]))["stages"]


def test_every_stage_has_its_script_deps_and_params():
    for name, stage in DVC.items():
        script = REPO / "stages" / f"{name}.py"
        assert script.is_file(), f"stage {name}: no {script}"
        assert f"python -m stages.{name} " in stage["cmd"] + " ", f"stage {name}: cmd must run stages.{name}"
        assert f"stages/{name}.py" in stage["deps"], f"stage {name}: its script is not a dep"
        outs = {next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])}
        for dep in stage["deps"]:
            produced = any(dep in {next(iter(o)) if isinstance(o, dict) else o for o in s.get("outs", [])}
                           for s in DVC.values())
            assert (REPO / dep).exists() or produced, f"stage {name}: dep {dep} neither exists nor is produced"
            assert dep not in outs
        for key in stage.get("params", []):
            node = PARAMS
            for part in key.split("."):
                assert part in node, f"stage {name}: param {key} not in params.yaml"
                node = node[part]
        declared = stage["deps"] + sorted(outs) + [str(stage.get("metrics")), str(stage.get("plots"))]
        for flag, path in re.findall(r"--(\w+) (\S+)", stage["cmd"]):
            if flag == "checkpoints":  # scratch space for resuming, deliberately outside DVC's outputs
                continue
            assert any(path in d for d in declared), f"stage {name}: {path} on the command line is not declared"


def test_every_rlhf_module_a_stage_imports_is_a_dep():
    for name, stage in DVC.items():
        source = (REPO / "stages" / f"{name}.py").read_text()
        imported = set(re.findall(r"from rlhf import ([\w, ]+)", source))
        modules = {m.strip() for group in imported for m in group.split(",")} - {"config"}
        for module in modules:
            assert f"rlhf/{module}.py" in stage["deps"], f"stage {name} imports rlhf.{module} but does not dep on it"


def test_align_depends_on_the_chosen_method_only():
    from rlhf.config import METHODS

    align = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["align"]
    assert "${method}" in align["params"] and "rlhf/methods/${method}.py" in align["deps"]
    assert not any(m in align["params"] for m in METHODS)
    for method in METHODS:
        assert (REPO / "rlhf" / "methods" / f"{method}.py").exists()


def test_every_stage_script_is_in_the_pipeline():
    scripts = {p.stem for p in (REPO / "stages").glob("*.py") if p.stem != "__init__"}
    assert scripts == set(DVC)


def test_stage_scripts_document_their_command_and_stay_thin():
    for path in (REPO / "stages").glob("*.py"):
        source = path.read_text()
        assert f"python -m stages.{path.stem}" in source.split('"""')[1], f"{path}: docstring lacks its command"
        assert len(source.splitlines()) < 100, f"{path} is not thin"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make repro" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_params_key_has_a_comment():
    for number, line in enumerate((REPO / "params.yaml").read_text().splitlines(), 1):
        if re.match(r"^\s*\w+:", line):
            assert "#" in line, f"params.yaml line {number} has no comment: {line.strip()}"


def test_dvc_analytics_off():
    config = (REPO / ".dvc" / "config").read_text()
    assert "analytics = false" in config and "check_update = false" in config
