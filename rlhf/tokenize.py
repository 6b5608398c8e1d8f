"""tokenize: chat template + tokenizer, once, into the columns the TRL trainers consume.

Output columns per row: `id`, `prompt_ids`, `chosen_ids`, `rejected_ids` (DPO's pre-tokenized format: the completion
ids exclude the prompt). The other trainers' columns are concatenations of these (see `sft_columns` and
`reward_columns`), so no training stage tokenizes again.

The model's chat template renders each row; a row the template refuses (a system message for Gemma's template, see
`tokenize.system_message`), or a template that renders the prompt differently once an answer follows, stops the stage
with an error naming the row (README, "Chat templates").

Prompts are truncated from the left (the end of a conversation matters most), completions from the right, to the
`tokenize.*` limits, or over-long pairs are dropped (`tokenize.overlong: drop`); every truncation and drop is counted.
A special token of the tokenizer written inside a row's text (`<|im_end|>`, `<|im_start|>assistant`) would reach the
model as a real control token and could end a turn early or inject a fake one: `tokenize.control_tokens` refuses such
a row, escapes it to plain text, or keeps it as written, and counts it (`control_tokens_in_text`).
`manifest.json` records each split's row count and a hash of its ids, so a training stage can assert that it trains on
exactly these rows (recent TRL versions drop rows whose prompt fills `max_length` without saying so).
"""
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

from rlhf import stream
from rlhf.config import Tokenize
from rlhf.io import UserError, read_json

MANIFEST = "manifest.json"
ARROW_FILE = "data-00000-of-00001.arrow"  # the file name save_to_disk gives a one-file split
COUNTS = ("truncated_prompt", "truncated_chosen", "truncated_rejected", "dropped_overlong_prompt",
          "dropped_overlong_chosen", "dropped_overlong_rejected", "dropped_empty_completion", "control_tokens_in_text")
# tokenize.control_tokens: escape writes this after the first character of a special token in a row's text. A
# zero-width space: invisible, so the text reads as written, and ordinary bytes to a byte-level BPE (every family in
# tests/test_templates.py). SentencePiece reaches it through byte fallback (Llama 2, Mistral, Gemma have it; not
# checked here); a vocabulary with neither would give <unk>.
ESCAPE = "\u200b"


def common_prefix_length(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def system_messages(messages: list[dict], how: str) -> list[dict]:
    """`messages` with system messages kept, dropped, or folded: their text goes in front of the next user message
    (for templates without a system role, such as Gemma's and Mistral's)."""
    if how == "keep":
        return messages
    out, pending = [], []
    for m in messages:
        if m["role"] == "system":
            pending.append(m["content"])
            continue
        if m["role"] == "user" and pending:
            if how == "fold_into_user":
                m = {"role": "user", "content": "\n\n".join(pending + [m["content"]])}
            pending = []
        out.append(m)
    return out


def render(tokenizer, messages: list[dict], row_id: str, **kwargs) -> str:
    """The chat template's text of `messages`; a template that refuses them is a UserError naming the row."""
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except TemplateError as err:
        if any(m["role"] == "system" for m in messages):
            hint = ("The row has a system message, which this chat template does not accept (Gemma's and Mistral's "
                    "have no system role): set tokenize.system_message to fold_into_user (its text goes in front of "
                    "the next user message) or drop.")
        else:
            hint = "Fix the row in your data, or give the model a chat template that accepts it."
        raise UserError(f"tokenize: the chat template refuses row {row_id!r}: {err}. {hint}") from None


def encode(row: dict, tokenizer, system_message: str) -> dict:
    """Token ids of one canonical row, split into prompt and completions as TRL's DPOTrainer does (see
    `encode_rows`)."""
    return encode_rows([row], tokenizer, system_message)[0]


def encode_rows(rows: list[dict], tokenizer, system_message: str) -> list[dict]:
    """Token ids of canonical rows, each split into prompt and completions as TRL's DPOTrainer does.

    The prompt is rendered with the generation prompt, as the model sees it when it answers; prompt + answer must
    start with exactly that text, or the model would be trained on a context it never sees (a UserError). The texts
    are tokenized without the tokenizer's own special tokens (the template writes BOS where the family wants one), in
    batched calls. The three texts of a row share the prompt's text up to its last special token (see `cut_point`):
    that part is tokenized once, not three times, which is most of the work on multi-turn data."""
    cuts = cut_tokens(tokenizer)
    heads, tails = [], []
    for row in rows:
        prompt = system_messages(row["prompt"], system_message)
        prompt_text = render(tokenizer, prompt, row["id"], add_generation_prompt=True)
        texts = [prompt_text]
        for key in ("chosen", "rejected"):
            text = render(tokenizer, prompt + row[key], row["id"])
            if not text.startswith(prompt_text):
                at = common_prefix_length(prompt_text, text)
                raise UserError(
                    f"tokenize: row {row['id']!r}: the chat template renders the prompt differently once an answer "
                    f"follows it (the prompt alone reads {prompt_text[at:at + 60]!r} where prompt + answer reads "
                    f"{text[at:at + 60]!r}), so the model would be trained on a context it never sees when it "
                    "answers. Some templates put the system message only in the last user turn or drop earlier "
                    "reasoning: try tokenize.system_message: fold_into_user, or give the model a template whose "
                    "prompt is a prefix of prompt + answer.")
            texts.append(text)
        cut = cut_point(prompt_text, cuts)
        heads.append(prompt_text[:cut])
        tails += [text[cut:] for text in texts]
    head_ids = tokenizer(heads, add_special_tokens=False)["input_ids"]
    tail_ids = tokenizer(tails, add_special_tokens=False)["input_ids"]
    out = []
    for i, row in enumerate(rows):
        prompt, chosen, rejected = (head_ids[i] + tail for tail in tail_ids[3 * i: 3 * i + 3])
        # Tokens may merge across the prompt/answer boundary: the completion starts where the sequences diverge.
        n = min(common_prefix_length(prompt, chosen), common_prefix_length(prompt, rejected))
        out.append({"id": row["id"], "prompt_ids": prompt[:n], "chosen_ids": chosen[n:], "rejected_ids": rejected[n:]})
    return out


def cut_tokens(tokenizer) -> tuple[list[str], list] | None:
    """(special tokens a text may be cut before, all added tokens) of a fast tokenizer; None for a slow one.

    A fast (HF tokenizers) tokenizer first splits a text at its added tokens and then normalizes, pre-tokenizes and
    encodes each piece on its own, so the ids of text[:k] followed by those of text[k:] are the ids of the text when
    an added token starts at k and nothing can pull text across k: no added-token match overlaps k, the token at k
    does not strip whitespace before it (lstrip), and no single-word token ends at k."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    added = list(tokenizer.added_tokens_decoder.values())
    cuts = [t.content for t in added if t.special and not (t.lstrip or t.rstrip or t.single_word or t.normalized)]
    return cuts, added


def cut_point(text: str, cuts: tuple[list[str], list] | None) -> int:
    """Where `text` may be cut so that its two parts tokenize apart to the same ids as the whole (see `cut_tokens`):
    before the last special token in it, or 0 (no cut) where no such place is safe."""
    if not cuts:
        return 0
    k = max(text.rfind(token) for token in cuts[0]) if cuts[0] else -1
    if k <= 0:
        return 0
    for token in cuts[1]:
        content = token.content
        start = text.find(content, max(0, k - len(content) + 1))
        if 0 <= start < k or (token.lstrip and text.startswith(content, k)) or \
                (token.single_word and text.endswith(content, 0, k)):
            return 0
    return k


def control_token_pattern(tokenizer) -> re.Pattern | None:
    """A regex of the strings this tokenizer turns into a control token wherever a text holds them: its special
    tokens (`all_special_tokens`: BOS, EOS, pad, unk, the additional ones) and every added token marked special (a
    chat template's turn markers are often only that). Added tokens not marked special (Qwen2.5's <tool_call>, say)
    are left alone: the tokenizer treats them as vocabulary, kept by decode(skip_special_tokens=True), and no
    template starts or ends a turn with one. Longest first, so a token holding another is found whole."""
    tokens = set(tokenizer.all_special_tokens)
    tokens |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    tokens.discard("")
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def guard_control_tokens(row: dict, pattern: re.Pattern | None, how: str, split: str | None) -> tuple[dict, bool]:
    """`row` with the special tokens in its message texts handled as `tokenize.control_tokens` says (refuse: a
    UserError naming the row; escape: ESCAPE after each one's first character; keep: as written), and whether it had
    any."""
    found = next(((key, m) for key in ("prompt", "chosen", "rejected") for message in row[key]
                  if pattern and (m := pattern.search(message["content"]))), None)
    if found is None or how == "keep":
        return row, found is not None
    key, match = found
    if how == "refuse":
        where = f" of the {split} split" if split else ""
        raise UserError(
            f"tokenize: row {row['id']!r}{where} has {match[0]!r} in its {key} text, a special token of this "
            "tokenizer: the chat template would pass it on as a real control token, so the text could end its turn "
            "early or inject a fake one (an answer written by the user, say). Most often the row holds a conversation "
            "already rendered with a chat template: give its turns as messages instead. If the text means the token "
            "literally, set tokenize.control_tokens to escape (a zero-width space makes it plain text) or keep (as "
            "written); both count such rows in metrics/tokenize.json.")
    escaped = {key: [{**m, "content": escape(m["content"], pattern, row["id"])} for m in row[key]]
               for key in ("prompt", "chosen", "rejected")}
    return {**row, **escaped}, True


def escape(text: str, pattern: re.Pattern, row_id: str) -> str:
    """`text` with ESCAPE after the first character of every special token in it, so that none matches."""
    out = pattern.sub(lambda m: m[0][0] + ESCAPE + m[0][1:], text)
    if leftover := pattern.search(out):  # a one-character token, or one that overlaps another
        raise UserError(f"tokenize: row {row_id!r}: {leftover[0]!r} cannot be escaped in its text; set "
                        "tokenize.control_tokens to refuse or keep, or remove it from the data.")
    return out


def fit(example: dict, cfg: Tokenize, counts: Counter) -> dict | None:
    """`example` cut to the length limits (prompt from the left, completions from the right), or None to drop it."""
    over = {
        "prompt": len(example["prompt_ids"]) > cfg.max_prompt_length,
        "chosen": len(example["chosen_ids"]) > cfg.max_completion_length,
        "rejected": len(example["rejected_ids"]) > cfg.max_completion_length,
    }
    if not any(over.values()):
        return example
    if cfg.overlong == "drop":
        counts["dropped_overlong_" + next(k for k, v in over.items() if v)] += 1
        return None
    for key, is_over in over.items():
        counts[f"truncated_{key}"] += is_over
    return {
        **example,
        "prompt_ids": example["prompt_ids"][-cfg.max_prompt_length:],
        "chosen_ids": example["chosen_ids"][: cfg.max_completion_length],
        "rejected_ids": example["rejected_ids"][: cfg.max_completion_length],
    }


def tokenize_split(rows: list[dict], tokenizer, cfg: Tokenize, split: str | None = None) -> tuple[list[dict], Counter]:
    """Encoded and length-limited rows, and the counts of truncations, drops and special tokens in the rows' texts
    (every key in COUNTS); `split` names the rows in errors."""
    out, counts, pattern, guarded = [], Counter(dict.fromkeys(COUNTS, 0)), control_token_pattern(tokenizer), []
    for row in rows:
        row, found = guard_control_tokens(row, pattern, cfg.control_tokens, split)
        counts["control_tokens_in_text"] += found
        guarded.append(row)
    for example in encode_rows(guarded, tokenizer, cfg.system_message):
        example = fit(example, cfg, counts)
        if example is None:
            continue
        if not example["chosen_ids"] or not example["rejected_ids"]:
            counts["dropped_empty_completion"] += 1  # the template swallowed the answer: nothing to learn from
            continue
        out.append(example)
    if len(out) + sum(v for k, v in counts.items() if k.startswith("dropped")) != len(rows):
        raise RuntimeError(f"tokenize lost rows without counting them, a bug: {len(rows)} in, {len(out)} out, {counts}")
    return out, counts


def tokenize_lines(lines: list[tuple[int, str]], tokenizer, cfg: Tokenize, split: str) -> tuple:
    """`tokenize_split` on a batch of (line number, JSON line) of canonical rows, in a worker process: the rows as an
    Arrow table (the ids go back as a few buffers, not as Python ints pickled one by one), their ids and total
    lengths, and the counts."""
    import pyarrow as pa

    examples, counts = tokenize_split([json.loads(line) for _, line in lines], tokenizer, cfg, split)
    table = pa.Table.from_pylist(examples, schema=features().arrow_schema)
    return table, [e["id"] for e in examples], [total_length(e) for e in examples], counts


def write_split(rows_file: Path, folder: Path, tokenizer, cfg: Tokenize, longest_first: bool, num_proc: int = 1,
                batch_size: int = 1000) -> tuple[dict, dict]:
    """Tokenize the JSON lines of `rows_file` into `folder`, a split as `Dataset.save_to_disk` writes it (its rows
    sorted longest first in tokens if `longest_first`); returns the split's metrics and manifest entry.

    Batches go through `num_proc` workers and straight into the Arrow file, so memory holds a few batches, never the
    split. Sorting goes through a temporary JSON-lines file, read back in the sorted order."""
    from datasets.arrow_writer import ArrowWriter
    from tqdm import tqdm

    counts, rows_in, lengths, ids = Counter(dict.fromkeys(COUNTS, 0)), 0, [], hashlib.sha256()
    folder.mkdir(parents=True)
    unsorted, unsorted_lengths = stream.LineIndex(folder.parent / f".{folder.name}-unsorted.jsonl"), []
    with ArrowWriter(features=features(), path=str(folder / ARROW_FILE)) as writer, \
            open(unsorted.path, "wb") as pending, tqdm(desc=f"tokenize {folder.name}", unit="row", mininterval=2) as bar:

        def record(batch_ids, batch_lengths):  # the manifest's id hash: the ids joined by "\n"
            for row_id, length in zip(batch_ids, batch_lengths):
                ids.update((("\n" if lengths else "") + row_id).encode())
                lengths.append(length)

        for table, batch_ids, batch_lengths, batch_counts in stream.parallel_map(
                tokenize_lines, stream.batched(stream.lines(rows_file), batch_size), num_proc, tokenizer=tokenizer,
                cfg=cfg, split=folder.name):
            counts.update(batch_counts)
            rows_in += sum(batch_counts[k] for k in COUNTS if k.startswith("dropped")) + len(batch_ids)
            bar.update(len(batch_ids))
            if not longest_first:
                record(batch_ids, batch_lengths)
                writer.write_table(table)
                continue
            for example, length in zip(table.to_pylist(), batch_lengths):
                unsorted.offsets.append(pending.tell())
                unsorted_lengths.append(length)
                pending.write(json.dumps(example).encode() + b"\n")
        pending.close()
        # longest first, ties in the order the rows came (a stable sort), as Python's sort(reverse=True) leaves them
        order = sorted(range(len(unsorted_lengths)), key=lambda i: -unsorted_lengths[i])
        for line in unsorted.read(order):
            example = json.loads(line)
            record([example["id"]], [total_length(example)])
            writer.write(example)
        writer.finalize()
    unsorted.path.unlink()
    if not lengths:
        raise UserError(f"tokenize: every {folder.name} row was dropped ({dict(counts)}); raise the tokenize.max_* "
                        "limits or set tokenize.overlong: truncate.")
    save_metadata(folder)
    metrics = {"rows_in": rows_in, "rows_out": len(lengths), **counts, "max_length": max(lengths),
               "mean_length": round(sum(lengths) / len(lengths), 2)}
    return metrics, {"rows": len(lengths), "ids_sha256": ids.hexdigest(), "max_length": max(lengths)}


def features():
    """The columns of a tokenized split (as `Dataset.from_list` infers them from our rows)."""
    from datasets import Features, List, Value

    ids = List(Value("int64"))
    return Features({"id": Value("string"), "prompt_ids": ids, "chosen_ids": ids, "rejected_ids": ids})


def save_metadata(folder: Path) -> None:
    """state.json and dataset_info.json beside the Arrow file, as `Dataset.save_to_disk` (datasets 5.2) writes them,
    so that `load_from_disk` reads the folder. save_to_disk itself would copy the data, reading it back through a
    memory map whose pages count as this process's memory: as much as the split. The fingerprint is the file's hash."""
    from datasets import Dataset
    from datasets.utils.py_utils import asdict

    with open(folder / ARROW_FILE, "rb") as f:
        fingerprint = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    state = {"_data_files": [{"filename": ARROW_FILE}], "_fingerprint": fingerprint, "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    info = asdict(Dataset.from_file(str(folder / ARROW_FILE)).info)  # memory-mapped: nothing is read
    (folder / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))


def total_length(example: dict) -> int:
    return len(example["prompt_ids"]) + max(len(example["chosen_ids"]), len(example["rejected_ids"]))


def ids_hash(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def check_rows(dataset, manifest: dict, split: str) -> None:
    """Raise if `dataset` does not hold exactly the rows the tokenize stage wrote for `split`, in the same order."""
    expected = manifest[split]
    ids = list(dataset["id"])
    if len(ids) != expected["rows"] or ids_hash(ids) != expected["ids_sha256"]:
        raise UserError(
            f"the {split} data about to be trained on has {len(ids)} rows, but the tokenize stage wrote "
            f"{expected['rows']} (or the ids differ): some rows were dropped or changed on the way. Check the "
            "trainer's max_length against tokenize.max_prompt_length + tokenize.max_completion_length."
        )


def sft_columns(example: dict) -> dict:
    """SFTTrainer's pre-tokenized columns: prompt + chosen, with the loss on the completion only."""
    return {
        "input_ids": example["prompt_ids"] + example["chosen_ids"],
        "completion_mask": [0] * len(example["prompt_ids"]) + [1] * len(example["chosen_ids"]),
    }


def reward_columns(example: dict) -> dict:
    """RewardTrainer's pre-tokenized columns: whole sequences, prompt included."""
    return {
        "chosen_ids": example["prompt_ids"] + example["chosen_ids"],
        "rejected_ids": example["prompt_ids"] + example["rejected_ids"],
    }


def legacy_pair_columns(example: dict) -> dict:
    """The columns TRL's older pairwise trainers (ORPO, CPO/SimPO in trl.experimental) build in `tokenize_row`:
    whole sequences with labels masked (-100) on the prompt."""
    prompt = example["prompt_ids"]
    out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for key in ("chosen", "rejected"):
        ids = prompt + example[f"{key}_ids"]
        out[f"{key}_input_ids"] = ids
        out[f"{key}_attention_mask"] = [1] * len(ids)
        out[f"{key}_labels"] = [-100] * len(prompt) + example[f"{key}_ids"]
    return out


def unpaired_columns(batch: dict) -> dict:
    """KTO's unpaired rows from a batch of pairs: (prompt, chosen, desirable) and (prompt, rejected, undesirable)."""
    n = len(batch["prompt_ids"])
    return {"prompt_ids": batch["prompt_ids"] * 2, "completion_ids": batch["chosen_ids"] + batch["rejected_ids"],
            "label": [True] * n + [False] * n}


def load_split(tokenized: str | Path, split: str, max_length: int):
    """One tokenized split, checked against the manifest, and refused if any row would not fit `max_length`
    (the trainers would truncate or drop it without saying so)."""
    from datasets import load_from_disk

    manifest = read_json(Path(tokenized) / MANIFEST)
    # In memory: a dataset mapped while backed by files writes cache files beside them, inside a DVC output.
    dataset = load_from_disk(str(tokenized), keep_in_memory=True)[split]
    check_rows(dataset, manifest, split)
    if manifest[split]["max_length"] > max_length:
        raise UserError(
            f"the longest {split} pair is {manifest[split]['max_length']} tokens but the training max_length is "
            f"{max_length}: the trainer would cut or drop rows. Raise max_length in params.yaml, or lower "
            "tokenize.max_prompt_length + tokenize.max_completion_length."
        )
    return dataset


def run(params, paths) -> None:
    """The tokenize stage: paths.tokenized as a DatasetDict on disk (train, validation) with its manifest (rows and id
    hash per split), and paths.tokenize_metrics (truncations, drops, lengths)."""
    from rlhf import models
    from rlhf.io import atomic_dir, provenance, write_json

    tokenizer = models.tokenizer(paths.base)
    metrics, manifest = {}, {}
    with atomic_dir(paths.tokenized) as tmp:
        for split in ("train", "validation"):
            # validation longest first in tokens, as prepare sorted it in characters
            metrics[split], manifest[split] = write_split(
                Path(paths.prepared) / f"{split}.jsonl", tmp / split, tokenizer, params.tokenize,
                longest_first=split == "validation", num_proc=stream.workers(params.processing.num_proc),
                batch_size=params.processing.batch_size)
        (tmp / "dataset_dict.json").write_text(json.dumps({"splits": list(manifest)}))
        # Versions but not params: the params are in dvc.lock, and a limit change that leaves every row as it was must
        # not change this output's hash, or DVC would retrain every stage after it for nothing.
        write_json(tmp / MANIFEST, {**manifest, "versions": provenance()["versions"]})
    write_json(paths.tokenize_metrics, metrics)
    print(f"tokenize: {metrics}")
