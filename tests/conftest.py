import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def messages(prompt: str, chosen: str, rejected: str, row_id: str = "r") -> dict:
    """A canonical row from three strings."""
    return {"id": row_id, "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


@pytest.fixture
def params_file(tmp_path):
    """Write a params.yaml from the repo's, with `overrides` applied as dotted keys; returns its path."""
    import yaml

    def write(overrides: dict | None = None, drop: str | None = None):
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        for dotted, value in (overrides or {}).items():
            *parents, last = dotted.split(".")
            node = raw
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = value
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return write
