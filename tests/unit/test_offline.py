"""A hub id fails in seconds, with a message that says what to do, when the hub cannot be reached: DNS failing at
once, or a network that hangs (a local socket that accepts connections and never answers stands in for it). A
mistyped local name is reported as a missing local file before any hub attempt. No real network is used."""
import socket
import threading
import time

import pytest

from tests.conftest import write_params
from rlhf import config
from rlhf.io import UserError


@pytest.fixture
def hanging_endpoint():
    """http://127.0.0.1:<port>: accepts connections, never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(16)], daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def load(kind: str, name: str, tmp_path):
    """The model or dataset path of the pipeline, on `name`."""
    key = "model.name" if kind == "model" else "data.source"
    params = config.load(write_params(tmp_path / "params.yaml", {key: name}))
    if kind == "model":
        from rlhf.base import resolve_pretrained
        return resolve_pretrained(params.model, tmp_path / "out")
    from rlhf.fetch import load_raw
    return load_raw(params.data, params.seed)


@pytest.mark.parametrize("kind", ["model", "dataset"])
@pytest.mark.parametrize("network", ["hangs", "no_dns"])
def test_unreachable_hub_fails_fast_and_says_what_to_do(kind, network, hanging_endpoint, tmp_path, monkeypatch):
    endpoint = hanging_endpoint if network == "hangs" else "http://hub.invalid"  # .invalid never resolves
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    import rlhf.base, rlhf.fetch  # noqa: F401,E401 (import torch first: the bound is on the hub, not on imports)
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot reach the Hugging Face hub") as err:
        load(kind, "someone/some-name", tmp_path)
    assert time.monotonic() - start < 10
    assert "HF_HUB_OFFLINE" in str(err.value) and "local" in str(err.value) and endpoint in str(err.value)


@pytest.mark.parametrize("kind", ["model", "dataset"])
@pytest.mark.parametrize("name", ["my-modle", "data/mine"])
def test_mistyped_local_name_is_not_taken_for_a_hub_id(kind, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")  # a hub attempt would give another message
    with pytest.raises(UserError, match="no such local file or folder"):
        load(kind, name, tmp_path)
