"""Atomic outputs and small file helpers shared by the stages.

DVC deletes a stage's outputs before running it and does not clean up after a failed command, so every output is
written to a temporary sibling and renamed into place only once it is complete: a failed stage leaves nothing that a
later stage could take for a good result.
"""
import contextlib
import dataclasses
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path


def temp_prefix(path: Path, owner: int | None = None) -> str:
    """The name of a temporary sibling of `path` starts with this: it carries the pid of the process that owns it
    (this one by default), so that a later run can tell a dead run's leftovers from a live run's folder."""
    return f".{path.name}.tmp-{owner or os.getpid()}-"


def clear_stale(folder: Path) -> None:
    """Delete the temporary outputs in `folder` whose owning process is gone (a stage killed by SIGKILL or the OOM
    killer runs no cleanup). Every stage that writes into `folder` sweeps all of them, not only its own: DVC restores
    an unchanged stage's output from its run cache without running it, so that stage would never clean up after
    itself. A folder whose owner is alive, or one with no pid in its name (not ours), is left alone."""
    for stale in folder.glob(".*.tmp-*"):
        owner = stale.name.rsplit(".tmp-", 1)[1].split("-")[0]
        if not owner.isdigit() or _alive(int(owner)):
            continue
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a fresh temporary directory that replaces `path` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_prefix(path) + "json")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=plain) + "\n")
    os.replace(tmp, path)


def plain(obj):
    """JSON for the config dataclasses and paths that provenance records."""
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def write_jsonl(path: str | Path, rows) -> int:
    """Write rows as JSON lines (not atomic on its own: call inside atomic_dir). Returns the row count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class UserError(Exception):
    """Bad input or settings: the message says what is wrong and what to do. Stages print it without a traceback."""


# Library warnings that every run gives and that need no action, dropped so that a log shows the ones that do; any
# other warning is kept. transformers 5 deprecates a name that TRL 1.16 still calls (trl/models/utils.py):
EXPECTED_WARNINGS = (r"`is_gradient_checkpointing` is deprecated",)


def expected_load_report(record) -> bool:
    """Whether `record` is transformers' load report whose only finding is the reward head `score.weight` "newly
    initialized": expected, as the reward stage creates and trains that head, and later loads take it from the reward
    adapter. A report naming any other key is not."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())  # the report is styled with terminal colours
    rows = [line for line in text.splitlines() if re.search(r"\|\s*(MISSING|UNEXPECTED|MISMATCH)", line)]
    return "LOAD REPORT" in text and len(rows) == 1 and rows[0].split("|")[0].strip() == "score.weight"


def quiet_expected_warnings() -> None:
    """Drop EXPECTED_WARNINGS and the reward head's load report (see expected_load_report)."""
    import logging
    import warnings

    for message in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("transformers.modeling_utils").addFilter(lambda record: not expected_load_report(record))


def run(main) -> None:
    """Run a stage's main(), turning a UserError into a one-paragraph message and exit status 1, and Ctrl-C into one
    line and the shell's status for it (130). Outputs are written atomically, so an interrupted stage leaves none."""
    quiet_expected_warnings()
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): no output was written.", file=sys.stderr)
        sys.exit(130)


def provenance(**params) -> dict:
    """What made an output: the resolved params it used and the versions of the libraries involved."""
    import importlib.metadata as md
    import platform

    packages = ("torch", "transformers", "trl", "peft", "datasets", "tokenizers", "accelerate", "dvc")
    versions = {name: md.version(name) for name in packages}
    return {"params": params, "python": platform.python_version(), "versions": versions}


def looks_local(name: str) -> bool:
    """Whether `name`, which names no existing file or folder, was meant as a local path rather than a hub id. A hub
    id is `owner/name`, one slash (a legacy id without an owner, such as `gpt2`, must be written with it:
    `openai-community/gpt2`). So a name without a slash, one starting with `.`, `/` or `~`, or one whose parent
    folder exists here (`data/mine`) is a mistyped local path, reported at once instead of asking the hub."""
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or Path(name).parent.is_dir()


def check_hub(key: str, name: str) -> None:
    """Fail in seconds when the hub cannot be reached. The libraries retry with backoff: measured, 27 s when DNS
    fails and 397 s when the network hangs. One request to the endpoint, bounded by HF_HUB_ETAG_TIMEOUT (5 s here,
    when unset), tells a dead network from a working one; a slow network that answers within it goes on to the
    libraries' own timeouts. Nothing is checked under HF_HUB_OFFLINE=1, where the libraries read only their cache."""
    import threading
    import urllib.error
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 5)
    outcome = []

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint + "/api/", method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # an answer, even an error status, is a working network
            outcome.append(None)
        except Exception as err:  # noqa: BLE001 (DNS, refused, timeout, TLS: all mean the same to the user)
            outcome.append(err)

    thread = threading.Thread(target=probe, daemon=True)  # daemon: a DNS lookup that hangs is not bounded by timeout
    thread.start()
    thread.join(timeout + 1)
    if outcome == [None]:
        return
    reason = f"{type(outcome[0]).__name__}: {outcome[0]}" if outcome else f"no answer in {timeout:g} s"
    raise UserError(
        f"{key} = {name!r} is a hub id, but this machine cannot reach the Hugging Face hub at {endpoint} ({reason}). "
        f"Without network, give a local file or folder instead, or set HF_HUB_OFFLINE=1 to use a copy already in the "
        f"Hugging Face cache. On a slow network, raise HF_HUB_ETAG_TIMEOUT (seconds, now {timeout:g}).")
