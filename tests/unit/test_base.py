"""base: the tiny model and tokenizer, and local / hub models resolved without copying weights."""
import json

import pytest
import torch

from rlhf import base, models, synthetic
from rlhf.io import UserError
from tests.conftest import messages, repo_params, repo_section

SMALL = {"model.tiny.vocab_size": 300, "model.tiny.hidden_size": 32, "model.tiny.intermediate_size": 64}


def rows(n=64):
    return [messages(r["prompt"], r["chosen"], r["rejected"], r["id"]) for r in synthetic.generate(n, seed=0)]


def nll(model, tokenizer, row) -> float:
    ids = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        return model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()


def test_tiny_model_builds_pretrains_and_loads_back(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    cfg = repo_params({**SMALL, "model.pretrain.max_steps": 40, "model.pretrain.per_device_train_batch_size": 8}).model
    stats = base.build_tiny(rows(), cfg, seed=0, out=tmp_path)
    assert stats["pretrain_steps"] == 40 and stats["pretrain_loss"] > 0
    tokenizer = models.tokenizer(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(model, LlamaForCausalLM) and model.config.hidden_size == 32
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.vocab_size == len(tokenizer)
    torch.manual_seed(0)
    untrained = LlamaForCausalLM(model.config)
    row = rows()[0]
    assert nll(model, tokenizer, row) < nll(untrained, tokenizer, row) - 1.0  # it learned the task's language


def test_tiny_model_is_deterministic(tmp_path):
    cfg = repo_params({**SMALL, "model.pretrain.max_steps": 5, "model.pretrain.per_device_train_batch_size": 8}).model
    a = base.build_tiny(rows(), cfg, seed=0, out=tmp_path / "a")
    b = base.build_tiny(rows(), cfg, seed=0, out=tmp_path / "b")
    assert a == b
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


@pytest.fixture
def local_model(tmp_path):
    """A model folder as a user would have it: weights, config and a tokenizer without a chat template."""
    cfg = repo_params({**SMALL, "model.pretrain.max_steps": 0}).model
    folder = tmp_path / "local-model"
    base.build_tiny(rows(), cfg, seed=0, out=folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return folder


def test_local_model_recorded_not_copied(tmp_path, local_model):
    out = tmp_path / "base"
    out.mkdir()
    weights = base.resolve_pretrained(repo_section("model", name=str(local_model)), out)
    assert weights["kind"] == "local" and weights["path"] == str(local_model)
    assert not list(out.glob("*.safetensors"))
    (out / base.BASE_FILE).write_text(json.dumps({"weights": weights}))
    assert base.weights_location(out) == (str(local_model), None)
    tokenizer = models.tokenizer(out)
    assert tokenizer.chat_template == base.FALLBACK_CHAT_TEMPLATE
    # The weights change behind the pipeline's back: later stages refuse them.
    (local_model / "model.safetensors").write_bytes(b"changed")
    with pytest.raises(UserError, match="changed since the base stage recorded it"):
        base.weights_location(out)


def test_missing_local_model_and_unreachable_hub_id(tmp_path):
    with pytest.raises(UserError, match="no such local file or folder"):
        base.resolve_pretrained(repo_section("model", name="./nope"), tmp_path)
    with pytest.raises(UserError, match="could not be loaded.*local folder"):
        base.resolve_pretrained(repo_section("model", name="no-such-org/no-such-model"), tmp_path)
