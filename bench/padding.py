"""How much of each training batch is padding: the default random order against transformers' length-grouped
batches (`train_sampling_strategy="group_by_length"`), on the real row lengths; and whether TRL's DPO
`padding_free` does anything in the installed release."""
import tempfile
from pathlib import Path

import torch

from rlhf import tokenize, train
from rlhf.io import read_jsonl


def pad_share(rows: list[tuple[int, ...]], order: list[int], batch_size: int) -> float:
    """Share of padding in the batches that `order` makes: each row is one or more sequences (DPO: chosen and
    rejected), and every sequence of a batch is padded to the batch's longest, as the TRL collators do."""
    slots = real = 0
    for start in range(0, len(order), batch_size):
        lengths = [n for i in order[start:start + batch_size] for n in rows[i]]
        slots += len(lengths) * max(lengths)
        real += sum(lengths)
    return 1 - real / slots


def orders(keys: list[int], group: int, seed: int, epochs: int) -> dict:
    """Row orders over `epochs`: a seeded random permutation per epoch (the default sampler), and transformers' own
    get_length_grouped_indices (random megabatches of 50 groups, at most, each sorted by `keys`, longest first)."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    generator = torch.Generator().manual_seed(seed)
    random = [i for _ in range(epochs) for i in torch.randperm(len(keys), generator=generator).tolist()]
    generator = torch.Generator().manual_seed(seed)
    grouped = [i for _ in range(epochs) for i in get_length_grouped_indices(keys, group, generator=generator)]
    return {"random": random, "group_by_length": grouped}


def shares(tokenized: Path, params) -> dict:
    """Padding share for SFT (prompt + chosen) and DPO (prompt + chosen and prompt + rejected, padded together) with
    the default per-device batch size, the params' seed and epochs."""
    rows = tokenize.load_split(tokenized, "train", 10**9)
    prompt, chosen, rejected = rows["prompt_ids"], rows["chosen_ids"], rows["rejected_ids"]
    sequences = {
        "sft": [(len(p) + len(c),) for p, c in zip(prompt, chosen)],
        "dpo": [(len(p) + len(c), len(p) + len(r)) for p, c, r in zip(prompt, chosen, rejected)],
    }
    out = {}
    for name, per_row in sequences.items():
        section, _, _ = train.resolve(params, getattr(params, name), train.accelerator_memory_gb())
        group = section.per_device_train_batch_size * section.gradient_accumulation_steps  # as the Trainer groups
        epochs = max(1, round(section.num_train_epochs))
        keys = [max(seqs) for seqs in per_row]  # SFT: input_ids length; DPO needs a `length` column to group at all
        share = {k: pad_share(per_row, order, section.per_device_train_batch_size)
                 for k, order in orders(keys, group, params.seed, epochs).items()}
        out[name] = {"per_device_train_batch_size": section.per_device_train_batch_size, "epochs": epochs,
                     "random_pad_share": round(share["random"], 4),
                     "group_by_length_pad_share": round(share["group_by_length"], 4),
                     # compute slots (batch x longest) saved by grouping, relative to random order
                     "token_slots_saved_share": round(1 - (1 - share["random"]) / (1 - share["group_by_length"]), 4)}
    return out


def padding_free_check(prepared: Path, model_dir: Path) -> dict:
    """Ask TRL's DPOTrainer for padding_free=True on a few rows and look at what it does: the flag after init, and
    the first training batch (padding-free would be one flattened row with no padding)."""
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    source = Path(trl.__file__).parent / "trainer" / "dpo_trainer.py"
    lines = source.read_text().splitlines()
    warns = [i for i, line in enumerate(lines, 1) if "padding_free" in line and "unavailable" in line]
    rows = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in read_jsonl(prepared / "train.jsonl")[:8]]
    with tempfile.TemporaryDirectory() as scratch:
        args = DPOConfig(output_dir=scratch, padding_free=True, per_device_train_batch_size=8, max_steps=1,
                         report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False)
        trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                             train_dataset=Dataset.from_list(rows),
                             processing_class=AutoTokenizer.from_pretrained(model_dir))
        batch = next(iter(trainer.get_train_dataloader()))
    padding = int((batch["attention_mask"] == 0).sum())
    return {
        "trl_version": trl.__version__,
        "warning_in_source": f"trl/trainer/dpo_trainer.py:{warns[0]}: {lines[warns[0] - 1].strip()}" if warns else None,
        "padding_free_requested": True, "trainer_padding_free_after_init": trainer.padding_free,
        "first_batch_input_ids_shape": list(batch["input_ids"].shape), "first_batch_padding_tokens": padding,
        "no_op": (not trainer.padding_free) and padding > 0,
    }
