"""The docs cannot drift from the code: every file path, `make` target, `python -m` module, params key and page link
that README.md, docs/*.md or bench/README.md names exists, and the README stays a guide (at most 250 lines). The
fenced blocks marked runnable (```bash runnable) run in the slow tier: tests/slow/test_docs_runnable.py."""
import importlib.util
import re
import subprocess

import pytest
import yaml

from tests.conftest import REPO

PAGES = sorted([REPO / "README.md", REPO / "bench" / "README.md", *(REPO / "docs").glob("*.md")])
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
PATHS = yaml.safe_load((REPO / "paths.yaml").read_text())["paths"]
SCRATCH = ("checkpoints/", "plots/", ".venv/", ".dvc/tmp/", ".dvc/config.local")  # git-ignored, made by use
EXTENSIONS = {"json", "jsonl", "py", "yaml", "yml", "md", "csv", "parquet", "txt", "png", "html", "gz", "lock"}


def text_of(page) -> str:
    """The page without HTML comments (placeholders for text to come may name what does not exist yet)."""
    return re.sub(r"<!--.*?-->", "", page.read_text(), flags=re.S)


def outside_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks."""
    return re.findall(r"`([^`\n]+)`", outside_fences(text))


def code(text: str) -> list[str]:
    """Everything a reader might copy: inline code spans and fenced blocks."""
    return spans(text) + re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)


def tracked() -> set[str]:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return set(files) | {"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)}


def path_exists(path: str, known: set[str]) -> bool:
    """In git, or a DVC output (or inside one) that a run writes, or a scratch folder a run creates."""
    path = path.rstrip("/")
    outputs = [str(p) for p in PATHS.values()]
    return (path in known or (REPO / path).exists() or any(path == o or path.startswith(o + "/") for o in outputs)
            or any((path + "/").startswith(s) for s in SCRATCH))


def named_paths(text: str) -> list[str]:
    """Code spans that are paths into this repository: they contain a slash and start at one of its top-level
    entries (so hub ids, other packages' source paths and the reader's own files are not checked)."""
    top = {p.name for p in REPO.iterdir()} | {str(p).split("/")[0] for p in PATHS.values()}
    found = []
    for span in spans(text):
        span = span.split(" ")[0].rstrip(".,:;")
        if "/" in span and not re.search(r"[<>*${}:~]", span) and span.split("/")[0] in top:
            found.append(span)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_file_path_a_page_names_exists(page):
    known = tracked()
    missing = [p for p in named_paths(text_of(page)) if not path_exists(p, known)]
    assert not missing, f"{page.relative_to(REPO)} names paths that do not exist: {missing}"


def anchors(page) -> set[str]:
    """The heading anchors GitHub makes for a page: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_to_a_page_or_file_resolves(page):
    """Relative links reach a file, and a link's #anchor a heading of the page it names."""
    links = re.findall(r"\]\(([^)\s]*)\)", text_of(page))
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        if "://" in target:
            continue
        path = page.parent / target if target else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(link)
    assert not broken, f"{page.relative_to(REPO)} has broken links: {broken}"


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_make_target_named_exists(page):
    named = {t for block in code(text_of(page)) for t in re.findall(r"(?:^|[\s`(&;])make ([\w-]+)", block)}
    assert named <= make_targets(), f"{page.relative_to(REPO)} names make targets the Makefile lacks: " \
                                    f"{sorted(named - make_targets())}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_python_module_named_imports(page):
    named = {m for block in code(text_of(page)) for m in re.findall(r"python -m ([\w.]*\w)(?![\w.<])", block)}
    missing = [m for m in sorted(named) if importlib.util.find_spec(m) is None]
    assert not missing, f"{page.relative_to(REPO)} names modules that do not import: {missing}"


def params_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= params_keys(value, f"{prefix}{key}.")
    return keys


def named_keys(text: str) -> set[str]:
    """Code spans that look like a params key (dotted, starting with a params.yaml section, not a file name), and
    the keys of `-S key=value` options anywhere in code."""
    named = set()
    for span in spans(text):
        key = span.split(":")[0].split("=")[0].strip()
        if re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", key) and key.split(".")[0] in PARAMS \
                and key.rsplit(".", 1)[1] not in EXTENSIONS:
            named.add(key)
    for block in code(text):
        named |= set(re.findall(r"-S ([a-z_][\w.]*)=", block))
    return named


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_params_key_named_exists(page):
    missing = sorted(named_keys(text_of(page)) - params_keys(PARAMS))
    assert not missing, f"{page.relative_to(REPO)} names params keys that params.yaml lacks: {missing}"


def test_readme_is_a_guide_of_at_most_250_lines():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


def test_no_page_states_the_old_three_methods():
    """The methods are six (and growing): no page may say the pipeline offers "DPO, ORPO or PPO"."""
    assert not [p for p in PAGES if "DPO, ORPO or PPO" in p.read_text()]


# A measured figure: a number with a unit of time, memory, share or speed-up. Outside fenced blocks, inline code and
# the blocks that bench.report generates, no page may state one: measurements come from metrics/bench.json
# (bench.report) or from the experiments (rlhf.report), never typed by hand.
MEASURED = re.compile(r"(?<![\w.`-])\d[\d,]*(?:\.\d+)?(?:\s?(?:ms|s|min|minutes|seconds|MiB|GiB|MB|GB|KB|%|pairs/s|µs)|x)"
                      r"(?![\w`])")  # "1.27x" is a ratio; "3 x 42" is arithmetic
SETTINGS = {"95%", "8 GB"}  # settings, not measurements: the intervals' level, compute.preset's GPU threshold
GENERATED = {"results.md"}  # params.md is generated too, but from params.yaml's comments: typed by hand


def measured_figures(text: str) -> list[str]:
    from bench.report import BLOCK

    prose = re.sub(r"`[^`\n]+`", "", outside_fences(BLOCK.sub("", text)))
    return [m for m in MEASURED.findall(prose) if m not in SETTINGS]


def test_the_figure_check_finds_a_typed_figure():
    typed = "The full run took 136 s and 761 MiB, 24% of it in align (1.27x plain TRL)."
    assert measured_figures(typed) == ["136 s", "761 MiB", "24%", "1.27x"]
    assert measured_figures("`took 12 s`\n<!-- bench.report pipeline -->\n12 s\n<!-- /bench.report -->\n95%") == []


@pytest.mark.parametrize("page", [p for p in PAGES if p.name not in GENERATED], ids=lambda p: str(p.relative_to(REPO)))
def test_no_measured_figure_is_typed_by_hand(page):
    found = measured_figures(page.read_text())
    assert not found, (f"{page.relative_to(REPO)} states measured figures by hand: {found}. Put them in "
                       "metrics/bench.json (a bench/ script) and a generated block (bench/report.py), or drop them.")


def test_generated_benchmark_blocks_match_metrics_bench_json():
    from bench import report
    assert not report.stale(report.read_json(report.BENCH)), "run `python -m bench.report --write`"
    names = {m["name"] for path in report.FILES for m in report.BLOCK.finditer(path.read_text())}
    assert names == set(report.BLOCKS), f"blocks used {sorted(names)} against defined {sorted(report.BLOCKS)}"
