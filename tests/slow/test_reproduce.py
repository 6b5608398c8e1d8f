"""A teammate reproduces a run: push to a DVC remote, clone, pull, and find everything up to date with identical
metrics; a forced rerun from scratch gives the same metrics; experiments travel with `dvc exp push` / `pull`."""
import contextlib
import getpass
import json
from pathlib import Path

import pytest

from tests.conftest import TINY, write_params
from rlhf import plots
from tests.slow.test_pipeline import COPY, REPO, ran, sh


GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def metrics(repo, skip=("train_seconds",)) -> dict:
    """Every metrics file of a checkout, without wall times (the one value that differs between identical runs)."""
    out = {}
    for path in sorted((repo / "metrics").glob("*.json")):
        data = json.loads(path.read_text())
        out[path.name] = {k: v for k, v in data.items() if k not in skip}
    return out


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A teammate's repo: the pipeline run on tiny settings, committed, and pushed to a local DVC remote."""
    import shutil

    root = tmp_path_factory.mktemp("teammate")
    work = root / "origin"
    for name in COPY:
        src, dst = REPO / name, work / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, dst)
    write_params(work / "params.yaml", TINY)
    sh(work, "git", "init", "-q", "-b", "main")
    sh(work, "dvc", "remote", "add", "-d", "store", str(root / "dvc-remote"))
    sh(work, "git", "add", "-A")
    sh(work, *GIT, "commit", "-qm", "pipeline")
    sh(work, "dvc", "repro")
    sh(work, "dvc", "push")
    sh(work, "git", "add", "-A")
    sh(work, *GIT, "commit", "-qm", "run")
    return work


def test_clone_pull_is_up_to_date_with_identical_metrics(origin, tmp_path):
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    sh(clone, "dvc", "pull")
    assert (clone / "models/policy/adapter_model.safetensors").exists()
    assert "up to date" in sh(clone, "dvc", "status").stdout
    assert ran(sh(clone, "dvc", "repro")) == []
    assert metrics(clone) == metrics(origin)


def test_rerun_from_scratch_gives_identical_metrics(origin, tmp_path):
    clone = tmp_path / "scratch"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    forced = sh(clone, "dvc", "repro", "--force")  # no pull: every stage runs again here
    assert ran(forced)[0] == "check" and ran(forced)[-1] == "export"
    assert metrics(clone) == metrics(origin)


def test_experiment_travels_with_exp_push_and_pull(origin, tmp_path):
    mine = tmp_path / "mine"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(mine))
    sh(mine, "dvc", "pull")
    run = sh(mine, "dvc", "exp", "run", "-n", "try-orpo", "-S", "method=orpo")
    assert ran(run) == ["check", "align", "evaluate", "export"]
    diff = json.loads(sh(mine, "dvc", "metrics", "diff", "HEAD", "try-orpo", "--json", "--all").stdout)
    assert "oracle_mean_policy" in diff["metrics/eval.json"] and "method" not in diff["metrics/eval.json"]
    assert diff["metrics/eval.json"]["kl_policy_sft"]["new"] != diff["metrics/eval.json"]["kl_policy_sft"]["old"]
    frontier = "Reward against KL(policy || SFT), one point per experiment (dvc plots diff)"
    with contextlib.chdir(mine):  # make compare's plots: one labelled point per experiment
        drawn, _ = plots.specs(["HEAD", "try-orpo"])
        assert sorted(row["rev"] for row in drawn[frontier]["data"]["values"]) == ["HEAD", "try-orpo"]
        assert frontier in plots.render(mine / "plots", ["HEAD", "try-orpo"])["files"].values()
    sh(mine, "dvc", "exp", "push", "origin", "try-orpo")

    theirs = tmp_path / "theirs"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(theirs))
    sh(theirs, "dvc", "exp", "pull", "origin", "try-orpo")
    sh(theirs, "dvc", "exp", "apply", "try-orpo")
    sh(theirs, "dvc", "pull")
    assert "up to date" in sh(theirs, "dvc", "status").stdout
    exp_metrics = json.loads((theirs / "metrics/align.json").read_text())
    assert exp_metrics["method"] == "orpo"
    assert metrics(theirs) == metrics(mine)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on 127.0.0.1 that accepts a fresh key (Debian's openssh-server; .ci/run installs it)."""
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(binary).exists() or not shutil.which("ssh-keygen"):
        pytest.skip("no sshd here: install Debian's openssh-server to test the SSH remote")
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        sh(root, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name))
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nAuthorizedKeysFile {root}/authorized_keys\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"StrictModes no\nUsePAM no\nPidFile {root / 'sshd.pid'}\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    server = subprocess.Popen([binary, "-D", "-e", "-f", str(root / "sshd_config")], stderr=subprocess.PIPE, text=True)
    for _ in range(50):
        if server.poll() is not None:
            pytest.skip(f"sshd could not start: {server.stderr.read().strip()[:300]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        server.kill()
        pytest.skip("sshd did not listen within 5 s")
    yield {"url": f"ssh://{getpass.getuser()}@127.0.0.1:{port}{root / 'store'}", "keyfile": str(root / "client_key")}
    server.kill()


def test_push_and_pull_through_an_ssh_remote(origin, sshd, tmp_path):
    """The transport DVC users run on a shared server: push over SSH, clone, pull over SSH, find it up to date."""
    sh(origin, "dvc", "remote", "add", "--local", "ssh", sshd["url"])
    sh(origin, "dvc", "remote", "modify", "--local", "ssh", "keyfile", sshd["keyfile"])
    sh(origin, "dvc", "push", "-r", "ssh")
    clone = tmp_path / "over-ssh"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    sh(clone, "dvc", "remote", "add", "--local", "ssh", sshd["url"])
    sh(clone, "dvc", "remote", "modify", "--local", "ssh", "keyfile", sshd["keyfile"])
    sh(clone, "dvc", "pull", "-r", "ssh")
    assert (clone / "models/policy/adapter_model.safetensors").read_bytes() == \
        (origin / "models/policy/adapter_model.safetensors").read_bytes()
    assert "up to date" in sh(clone, "dvc", "status").stdout
    assert metrics(clone) == metrics(origin)


def md5s(repo) -> dict:
    """md5 of every file under models/ and metrics/."""
    import hashlib

    return {str(p.relative_to(repo)): hashlib.md5(p.read_bytes()).hexdigest()
            for folder in ("models", "metrics") for p in sorted((repo / folder).rglob("*")) if p.is_file()}


def test_teammate_gets_experiments_made_before_and_after_dvc_remote_add(tmp_path):
    """The README's teammate section, command for command. The DVC remote lives in .dvc/config.local (`dvc remote add
    --local`), which no commit carries: an experiment's commit holds the .dvc/config of its time, so a remote added to
    the project config after an experiment was unknown to that experiment's `dvc exp push` (issue 23)."""
    from tests.slow.test_workflow import MAKE, make_copy

    store = tmp_path / "dvc-store"
    sh(tmp_path, "git", "init", "-q", "--bare", "-b", "main", "origin.git")  # HEAD on main: a clone checks it out
    mine = make_copy(tmp_path / "mine")
    sh(mine, "git", "remote", "add", "origin", str(tmp_path / "origin.git"))
    sh(mine, "dvc", "repro")
    sh(mine, "git", "add", "-A")
    sh(mine, *GIT, "commit", "-qm", "run")
    sh(mine, "git", "push", "-q", "origin", "main")
    expected = {}
    sh(mine, *MAKE, "exp", "ARGS=-n before -S method=orpo -S export.enabled=false")  # no remote yet
    expected["before"] = md5s(mine)
    sh(mine, "dvc", "remote", "add", "--local", "-d", "store", str(store))
    sh(mine, *MAKE, "exp", "ARGS=-n after -S dpo.beta=0.2 -S export.enabled=false")
    expected["after"] = md5s(mine)
    sh(mine, "dvc", "exp", "push", "-r", "store", "origin", "before", "after")

    theirs = tmp_path / "theirs"
    sh(tmp_path, "git", "clone", "-q", str(tmp_path / "origin.git"), str(theirs))
    sh(theirs, "dvc", "remote", "add", "--local", "-d", "store", str(store))
    for name in ("before", "after"):
        sh(theirs, "dvc", "exp", "pull", "-r", "store", "origin", name)
        sh(theirs, "dvc", "exp", "apply", name)
        assert md5s(theirs) == expected[name], name
