"""reference: the SFT model's log-probabilities of every tokenized pair, computed once per SFT model.

DPO's reference is the SFT model (the policy with its new adapter disabled), which never changes during training. So
its log-probs of the training and validation pairs are computed here, once, and not in every policy step of every
experiment: a sweep over `method` or `dpo.*` takes them from DVC's cache. Per row: `id`, and TRL's columns
`ref_chosen_logps` and `ref_rejected_logps`, the sum of the completion tokens' log-probs given the prompt (what
DPOTrainer's own reference pass computes), in the row order of data/tokenized.

KTO reads none of this: its reference terms depend on its own batches (see rlhf/methods/kto.py).
"""
from pathlib import Path

from rlhf import models, scoring, tokenize
from rlhf.io import UserError, atomic_dir, provenance, write_json

SPLITS = ("train", "validation")
COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")  # TRL's names: DPOTrainer reads them from each batch
MANIFEST = "manifest.json"


def split_logprobs(model, rows, pad_id: int, batch_size: int, name: str) -> dict:
    """{"id", *COLUMNS} of one tokenized split, in its row order, as lists."""
    from tqdm import tqdm

    out = {"id": list(rows["id"]), **{column: [] for column in COLUMNS}}
    for start in tqdm(range(0, len(rows), batch_size), desc=f"reference log-probs, {name}", unit="batch",
                      mininterval=2):
        batch = rows[start:start + batch_size]
        for key, column in zip(("chosen", "rejected"), COLUMNS):
            sums, _ = scoring.completion_logprobs(model, batch["prompt_ids"], batch[f"{key}_ids"], pad_id, batch_size)
            out[column] += sums.tolist()
    return out


def compute(params, paths):
    """(DatasetDict of both splits' reference log-probs, manifest: rows and ids hash per split)."""
    from datasets import Dataset, DatasetDict, Features, Value

    model = models.sft_merged(paths.base, paths.sft, params.model).eval()
    pad_id = models.tokenizer(paths.base).pad_token_id
    features = Features({"id": Value("string"), **{column: Value("float32") for column in COLUMNS}})
    splits, manifest = {}, {}
    for split in SPLITS:
        rows = tokenize.load_split(paths.tokenized, split, 10**9)
        values = split_logprobs(model, rows, pad_id, params.reference.batch_size, split)
        splits[split] = Dataset.from_dict(values, features=features)
        manifest[split] = {"rows": len(rows), "ids_sha256": tokenize.ids_hash(values["id"])}
    return DatasetDict(splits), manifest


def add_columns(rows, reference_dir: str | Path, split: str):
    """`rows` (a split of data/tokenized, `id` column included) with the reference stage's columns added; a UserError
    if they were computed for other rows or in another order."""
    from datasets import concatenate_datasets, load_from_disk

    reference = load_from_disk(str(reference_dir), keep_in_memory=True)[split]
    if list(reference["id"]) != list(rows["id"]):
        raise UserError(
            f"{reference_dir}: its {split} log-probs are for other rows than the tokenized data ({len(reference)} "
            f"rows against {len(rows)}, or other ids, or another order). It was written for another data/tokenized: "
            "rerun the reference stage (`dvc repro reference`).")
    return concatenate_datasets([rows, reference.select_columns(list(COLUMNS))], axis=1)


def run(params, paths) -> None:
    """The reference stage: paths.reference holds both splits' log-probs and their manifest."""
    splits, manifest = compute(params, paths)
    with atomic_dir(paths.reference) as tmp:
        splits.save_to_disk(str(tmp))
        write_json(tmp / MANIFEST, {**manifest, **provenance(model=params.model, reference=params.reference)})
    print(f"reference: {manifest}")
