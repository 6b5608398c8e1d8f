"""Config, dvc.yaml, scripts and docs cannot drift apart."""
import ast
import hashlib
import re
from pathlib import Path

import yaml

from tests.conftest import REPO
from rlhf.paths import interpolate

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
# dvc.yaml templating: ${paths.<name>} comes from paths.yaml, ${method} is the value of `method` in params.yaml
DVC = yaml.safe_load(interpolate((REPO / "dvc.yaml").read_text()).replace("${method}", PARAMS["method"]))["stages"]


def _paths(stage: dict, keys=("outs",)) -> set[str]:
    """The paths a stage declares under `keys` (each entry a path, or a one-key mapping of a path to its options)."""
    return {next(iter(o)) if isinstance(o, dict) else o for key in keys for o in stage.get(key, [])}


def _param(key: str, where: str):
    """The value of dotted `key` in params.yaml."""
    node = PARAMS
    for part in key.split("."):
        assert part in node, f"{where}: param {key} not in params.yaml"
        node = node[part]
    return node


def test_every_stage_has_its_script_deps_and_params():
    for name, stage in DVC.items():
        script = REPO / "stages" / f"{name}.py"
        assert script.is_file(), f"stage {name}: no {script}"
        assert f"python -m stages.{name} " in stage["cmd"] + " ", f"stage {name}: cmd must run stages.{name}"
        assert f"stages/{name}.py" in stage["deps"], f"stage {name}: its script is not a dep"
        outs = _paths(stage)
        for dep in stage["deps"]:
            produced = any(dep in _paths(s) for s in DVC.values())
            assert (REPO / dep).exists() or produced, f"stage {name}: dep {dep} neither exists nor is produced"
            assert dep not in outs
        for key in stage.get("params", []):
            _param(key, f"stage {name}")
        declared = stage["deps"] + sorted(outs) + [str(stage.get("metrics")), str(stage.get("plots"))]
        for flag, path in re.findall(r"--(\w+) (\S+)", stage["cmd"]):
            if flag == "checkpoints":  # scratch space for resuming, deliberately outside DVC's outputs
                continue
            assert any(path in d for d in declared), f"stage {name}: {path} on the command line is not declared"


def test_align_depends_on_the_chosen_method_only():
    from rlhf.config import METHODS

    align = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["align"]
    assert "${method}" in align["params"] and "rlhf/methods/${method}.py" in align["deps"]
    assert not any(m in align["params"] for m in METHODS)
    for method in METHODS:
        assert (REPO / "rlhf" / "methods" / f"{method}.py").exists()


def test_align_depends_on_the_user_reward_functions():
    """rlhf/rewards.py loads the functions params.yaml names from rewards/ only, so that folder as a dep of align
    reruns it when one changes."""
    from rlhf import rewards

    align = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["align"]
    assert rewards.USER_PACKAGE in align["deps"] and (REPO / rewards.USER_PACKAGE / "__init__.py").is_file()


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


# -- dvc.lock belongs to the code beside it ---------------------------------------------------------------------------

def test_lock_matches_the_code_params_and_stage_definitions():
    """Fails whenever `dvc repro` would rerun a stage because of code, params or dvc.yaml: the committed lock (and so
    the committed metrics and README figures) must come from a `make repro` at this code. Data and model outputs are
    not checked here (a fresh clone has them only after `dvc pull`)."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    produced = set().union(*(_paths(s, ("outs", "metrics", "plots")) for s in DVC.values()))
    assert set(lock) == set(DVC), "dvc.lock and dvc.yaml list different stages: run `make repro`"
    stale = []
    for name, stage in DVC.items():
        locked = lock[name]
        if " ".join(locked["cmd"].split()) != " ".join(stage["cmd"].split()):
            stale.append(f"{name}: cmd")
        if {d["path"] for d in locked["deps"]} != set(stage["deps"]):
            stale.append(f"{name}: deps list")
        for dep in locked["deps"]:
            path = REPO / dep["path"]
            if dep["path"] in produced or not path.is_file():
                continue
            if hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                stale.append(f"{name}: {dep['path']} changed")
        recorded = locked.get("params", {}).get("params.yaml", {})
        for key in stage.get("params", []):
            if recorded.get(key) != _param(key, f"stage {name}"):
                stale.append(f"{name}: param {key}")
    assert not stale, f"dvc.lock is stale ({'; '.join(stale)}): run `make repro` and commit dvc.lock with metrics/"


# -- every stage depends on all the code it runs ----------------------------------------------------------------------

# rlhf files deliberately not listed as deps, with the reason. Nothing here may hold code that can change an output:
# test_dep_exclusions_hold_no_code checks that each is a docstring and nothing else.
NOT_DEPS = {
    "rlhf/methods/__init__.py": "a docstring only: documents the `run` signature every method module shares",
    "rlhf/ppo/__init__.py": "a docstring only: lists PPO's parts and says why they sit outside rlhf/methods/",
}
# Modules that import others by a name computed at run time: the stage that runs that import, and what it loads.
# (evaluate imports rlhf.align too, but only to load the saved policy, never the method's code.)
# rlhf/rewards.py imports the user's reward functions from rewards/, a folder dep of align (checked below), not rlhf
# code: it adds no rlhf file to the closure.
DYNAMIC = {"rlhf/align.py": ("align", lambda method: f"rlhf/methods/{method}.py"),
           "rlhf/rewards.py": ("align", lambda method: f"rlhf/methods/{method}.py")}


def _module_path(name: str) -> str | None:
    """rlhf/x.py or rlhf/x/__init__.py for module `rlhf.x`; None if `name` is not a module (e.g. a function)."""
    rel = name.replace(".", "/")
    for candidate in (f"{rel}.py", f"{rel}/__init__.py"):
        if (REPO / candidate).is_file():
            return candidate
    return None


def _rlhf_imports(path: str) -> set[str]:
    """The rlhf files one file imports, anywhere in it (top level or inside functions), including the packages'
    __init__.py that Python runs first."""
    found = set()
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name == "rlhf" or name.startswith("rlhf."):
                parts = name.split(".")
                found |= {p for i in range(1, len(parts) + 1) if (p := _module_path(".".join(parts[:i])))}
    return found


def _closure(stage: str, method: str) -> set[str]:
    """Every rlhf file that stage `stage` runs when params.yaml says `method`, minus NOT_DEPS."""
    dynamic = {load(method) for run_by, load in DYNAMIC.values() if run_by == stage}
    todo, seen = [f"stages/{stage}.py", *dynamic], set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += _rlhf_imports(path)
    return seen - set(NOT_DEPS)


def test_every_stage_depends_on_all_rlhf_code_it_imports():
    """The transitive closure of each stage script's rlhf imports (with the method module that align loads by name)
    is among the stage's code deps in dvc.yaml, for every method: a missing dep lets a code change rerun nothing.
    And no code dep is unused: an extra one reruns a stage for code it never runs, except where another method needs
    it (a dep can depend on `method` only through the ${method} in a path)."""
    from rlhf.config import METHODS

    raw = (REPO / "dvc.yaml").read_text()
    for name in DVC:
        needed = {method: _closure(name, method) for method in METHODS}
        for method in METHODS:
            stage = yaml.safe_load(raw.replace("${method}", method))["stages"][name]
            declared = {d for d in stage["deps"] if d.endswith(".py")}
            missing, extra = needed[method] - declared, declared - set.union(*needed.values())
            assert not missing, f"stage {name} (method {method}) runs {sorted(missing)}: add them to its deps"
            assert not extra, f"stage {name} (method {method}) declares {sorted(extra)} but never runs them"


def test_only_the_known_modules_import_by_computed_name():
    """A new importlib.import_module / __import__ elsewhere would hide a dependency from the closure above."""
    for path in sorted((REPO / "rlhf").rglob("*.py")) + sorted((REPO / "stages").glob("*.py")):
        rel = str(path.relative_to(REPO))
        dynamic = "import_module(" in path.read_text() or "__import__(" in path.read_text()
        assert not dynamic or rel in DYNAMIC, f"{rel} imports by computed name: add it to DYNAMIC in this test"


def test_dep_exclusions_hold_no_code():
    for path, reason in NOT_DEPS.items():
        body = ast.parse((REPO / path).read_text()).body
        assert reason and len(body) == 1 and isinstance(body[0], ast.Expr), f"{path} has code: make it a dep"


def test_readme_images_exist():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (REPO / "README.md").read_text()):
        assert (REPO / path).is_file(), f"README.md shows {path}, which is not in the repo"


def test_the_committed_default_run_passes_the_gate_and_was_exported():
    """The embedded default's policy meets eval.gate (metrics/eval.json comes from `make repro` at this code, as the
    lock test above guarantees), so `make repro` ends with models/export."""
    import json

    metrics = json.loads((REPO / "metrics" / "eval.json").read_text())
    assert metrics["gate_passed"] is True and all(v is True for k, v in metrics.items() if k.startswith("gate_"))
    export = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]["export"]
    assert [o["path"] for o in export["outs"]] == ["models/export"]


def dir_md5(folder: Path) -> str:
    """A folder's hash as DVC 3 records it in dvc.lock: md5 of the sorted (relpath, md5) list, plus '.dir'."""
    import json

    entries = sorted(({"md5": hashlib.md5(p.read_bytes()).hexdigest(), "relpath": p.relative_to(folder).as_posix()}
                      for p in folder.rglob("*") if p.is_file()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def test_fetch_and_prepare_give_the_locked_outputs_without_torch(tmp_path):
    """fetch and prepare, run on the repository's params.yaml, write byte for byte the outputs dvc.lock records (their
    hashes have not changed since before the stages streamed), and never import torch, transformers or trl, which
    would cost a second or more of start-up. Catches a changed row, id, order or count, and a heavy import."""
    import os
    import shutil
    import subprocess
    import sys

    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    for stage, args in (("fetch", []), ("prepare", ["--data-metrics", "m.json"])):
        check = (f"import runpy, sys; sys.argv = ['{stage}', *{args!r}]; runpy.run_module('stages.{stage}', "
                 "run_name='__main__'); print('heavy:', [m for m in ('torch', 'transformers', 'trl') "
                 "if m in sys.modules])")
        out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr[-2000:]
        assert "heavy: []" in out.stdout, (stage, out.stdout)
        locked = next(o["md5"] for o in lock[stage]["outs"] if o["path"] == DVC[stage]["outs"][0])
        assert dir_md5(tmp_path / DVC[stage]["outs"][0]) == locked, f"{stage} output differs from dvc.lock"


def test_tests_are_laid_out_like_the_code_and_slow_by_folder():
    """tests/unit, tests/stages, tests/slow and tests/repo hold every test file; the slow tier is tests/slow/ alone
    (conftest.py marks it), so no file marks a test slow by hand."""
    tests = REPO / "tests"
    files = sorted(p.relative_to(tests) for p in tests.rglob("test_*.py"))
    assert files and all(p.parts[0] in ("unit", "stages", "slow", "repo") and len(p.parts) == 2 for p in files), files
    by_hand = re.compile(r"^\s*(@pytest\.mark\.slow|pytestmark\b)", re.M)
    marked = [str(p) for p in files if by_hand.search((tests / p).read_text())]
    assert not marked, f"mark tests slow by moving them to tests/slow/, not by hand: {marked}"
