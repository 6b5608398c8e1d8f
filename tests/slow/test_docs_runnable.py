"""Every fenced block a page marks runnable (```bash runnable) runs as written, in a scratch git copy of the tracked
files, with `set -e`: a renamed module, target, file or flag in a copied command fails here. Mark only blocks that
take seconds; the pipeline's own commands are covered by the other slow tests."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.repo.test_docs import PAGES

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def runnable_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in PAGES:
        for number, block in enumerate(re.findall(r"^```bash runnable\n(.*?)^```", page.read_text(),
                                                  flags=re.S | re.M), 1):
            blocks.append((f"{page.relative_to(REPO)}#{number}", block))
    return blocks


def test_some_blocks_are_marked_runnable():
    assert len(runnable_blocks()) >= 2


@pytest.mark.parametrize("name,block", runnable_blocks(), ids=[name for name, _ in runnable_blocks()])
def test_runnable_block_runs(name, block, tmp_path):
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for path in files:
        if (REPO / path).is_file():
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / path, tmp_path / path)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-qm", "docs"], cwd=tmp_path, check=True)
    # the Makefile's targets without its venv step (STAMP=): this test already runs in the pinned environment
    script = 'make() { command make STAMP= "$@"; }\nset -e\n' + block
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, f"{name} failed:\n{block}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
