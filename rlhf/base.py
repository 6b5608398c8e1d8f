"""base: the model every training stage starts from, and the tokenizer every stage shares.

`model.name` is one of
- `builtin:tiny`: a small Llama-style model built from `model.tiny` (LlamaConfig fields) with a byte-level BPE
  tokenizer trained on the prepared training text, then pretrained briefly on the training conversations (chosen
  and rejected alike), the way a real base model has seen text of every quality. Saved with `save_pretrained`.
- a local model folder or a hub id: loaded with `from_pretrained`. Only the tokenizer is saved here; the weights stay
  where they are (never copied into the DVC cache) and `base.json` records what to load: the hub id with its resolved
  commit, or the local path with a fingerprint that later stages check.
"""
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from rlhf.config import Model
from rlhf.io import UserError, check_hub, looks_local

# ChatML, used for models whose tokenizer has no chat template. The prompt rendered with add_generation_prompt is a
# prefix of prompt + answer, so the tokenize stage can split prompt and completion exactly. A turn ends with the
# tokenizer's EOS (<|im_end|> for the tiny model's tokenizer): a tokenizer without ChatML's tokens still has a special
# token where an answer ends, so generation knows where to stop.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BASE_FILE = "base.json"


def build_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`, with ChatML special tokens; <|im_end|> ends a turn (EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, chat_template=FALLBACK_CHAT_TEMPLATE, model_max_length=4096)


def build_tiny(train_rows: list[dict], cfg: Model, seed: int, out: Path) -> dict:
    """Train the tokenizer, build and pretrain the tiny model, save both to `out`; returns the pretrain stats."""
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = [m["content"] for row in train_rows for key in ("prompt", "chosen", "rejected") for m in row[key]]
    tokenizer = build_tokenizer(texts, cfg.tiny.vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(**vars(cfg.tiny) | {"vocab_size": len(tokenizer)}, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    model = LlamaForCausalLM(config)
    stats = pretrain(model, tokenizer, train_rows, cfg, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return stats


def pretrain(model, tokenizer, train_rows: list[dict], cfg: Model, seed: int) -> dict:
    """Causal-LM training on every training conversation (prompt + chosen, prompt + rejected)."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    if cfg.pretrain.max_steps == 0:
        return {"pretrain_steps": 0}
    texts = [tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=False)
             for row in train_rows for key in ("chosen", "rejected")]
    limit = model.config.max_position_embeddings
    data = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=limit), batched=True, remove_columns=["text"])
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    with tempfile.TemporaryDirectory(prefix="pretrain-") as scratch:  # nothing to keep: the stage saves the model
        args = TrainingArguments(
            output_dir=scratch, max_steps=cfg.pretrain.max_steps, learning_rate=cfg.pretrain.learning_rate,
            per_device_train_batch_size=cfg.pretrain.per_device_train_batch_size, lr_scheduler_type="cosine",
            warmup_steps=cfg.pretrain.max_steps // 10, weight_decay=0.0, seed=seed, data_seed=seed,
            save_strategy="no", report_to=[], logging_steps=max(1, cfg.pretrain.max_steps // 10),
            use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        )
        result = Trainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
    return {"pretrain_steps": cfg.pretrain.max_steps, "pretrain_loss": round(result.training_loss, 6)}


def resolve_pretrained(cfg: Model, out: Path) -> dict:
    """Check that a local or hub model loads, save its tokenizer to `out`; returns what later stages load."""
    path = Path(cfg.name).expanduser()
    local = path.is_dir()
    if not local and looks_local(cfg.name):
        raise UserError(f"model.name = {cfg.name!r}: no such local file or folder (looked in {path.resolve()}). Give a "
                        "model folder holding config.json, or a hub id of the form owner/name.")
    if not local:
        check_hub("model.name", cfg.name)
    from transformers import AutoConfig, AutoTokenizer  # after the checks: the import alone takes seconds

    try:
        config = AutoConfig.from_pretrained(cfg.name, revision=cfg.revision)
        tokenizer = AutoTokenizer.from_pretrained(cfg.name, revision=cfg.revision)
    except (OSError, ValueError) as err:
        raise UserError(f"model.name = {cfg.name!r} (revision {cfg.revision!r}) could not be loaded: {' '.join(str(err).split())} Without "
                      "network access, give a local folder that holds config.json, the weights and the tokenizer."
                      ) from None
    if tokenizer.chat_template is None:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_template(tokenizer, cfg.name)
    tokenizer.save_pretrained(out)
    if local:
        return {"kind": "local", "path": str(path.resolve()), "fingerprint": fingerprint(path)}
    return {"kind": "hub", "name": cfg.name, "revision": getattr(config, "_commit_hash", None) or cfg.revision}


PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "PROBE"}]


def end_of_turn(tokenizer) -> tuple[int, list[int]]:
    """(the token that ends an assistant answer, the tokens the chat template writes after it), read off the template
    by rendering a probe answer: <|im_end|> and a newline for ChatML (Qwen), <|eot_id|> for Llama 3, </s> for Mistral
    and Llama 2, <end_of_turn> and a newline for Gemma. It is the first special token after the answer's text, which
    need not be the tokenizer's EOS (Gemma's EOS is <eos>; Llama 3's first release had <|end_of_text|>)."""
    text = tokenizer.apply_chat_template(PROBE, tokenize=False)
    after = text[text.rfind("PROBE") + len("PROBE"):]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for n, token in enumerate(ids):
        if token in special:
            return token, ids[n + 1:]
    raise UserError(f"the chat template ends an assistant answer with {after!r}, which holds no special token, so "
                    "generation could not tell where an answer ends. Give the model a chat template that closes each "
                    "assistant turn with a special token (its end-of-turn token or EOS), in tokenizer_config.json's "
                    "chat_template or a chat_template.jinja file in the model folder.")


def check_template(tokenizer, name: str) -> None:
    """Raise a UserError if the chat template of model `name` has no end-of-turn token or writes BOS twice."""
    end_of_turn(tokenizer)
    ids = tokenizer.apply_chat_template(PROBE, tokenize=True, return_dict=True)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:2] == [bos, bos]:
        raise UserError(f"model.name = {name!r}: its chat template starts a conversation with two BOS tokens "
                        f"({tokenizer.bos_token!r}). Fix the template so it writes bos_token once.")


def fingerprint(folder: Path) -> str:
    """A quick content fingerprint of a model folder: names, sizes, and the first and last MiB of each file."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        h.update(f"{path.relative_to(folder)}:{size}".encode())
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()


def weights_location(base_dir: str | Path) -> tuple[str, str | None]:
    """(name or path, revision) to pass to `from_pretrained` for the base model recorded in `base_dir`."""
    base_dir = Path(base_dir)
    info = json.loads((base_dir / BASE_FILE).read_text())["weights"]
    if info["kind"] == "builtin":
        return str(base_dir), None
    if info["kind"] == "local":
        if fingerprint(Path(info["path"])) != info["fingerprint"]:
            raise UserError(f"the base model folder {info['path']} changed since the base stage recorded it. "
                               "Run `dvc repro -f -s base` to record the new weights (and retrain what follows).")
        return info["path"], None
    return info["name"], info["revision"]


def run(params, paths) -> None:
    """The base stage: paths.base holds the tokenizer and base.json (what to load, and what made it), plus the
    weights for builtin:tiny."""
    from rlhf.io import atomic_dir, provenance, read_jsonl, write_json

    with atomic_dir(paths.base) as tmp:
        if params.model.name == "builtin:tiny":
            stats = build_tiny(read_jsonl(Path(paths.prepared) / "train.jsonl"), params.model, params.seed, tmp)
            weights = {"kind": "builtin", **stats}
        else:
            weights = resolve_pretrained(params.model, tmp)
        made_by = {k: getattr(params.model, k) for k in ("name", "revision", "tiny", "pretrain")}
        write_json(tmp / BASE_FILE, {"weights": weights, **provenance(seed=params.seed, model=made_by)})
    print(f"base: {params.model.name} -> {paths.base} ({weights})")
