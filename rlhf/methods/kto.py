"""KTO (Ethayarajh et al., 2024) with TRL's KTOTrainer. Each preference pair is unpaired into a desirable example
(prompt, chosen) and an undesirable one (prompt, rejected). Starts from the SFT model with a new LoRA adapter; the
reference is the same weights with the adapter disabled.

The reference runs in every step, not from the reference stage (data/reference), as DPO's does. KTO's reference
terms are the matched log-probs (the same sequences as DPO's ref_chosen / ref_rejected) and the KL term's
ref_KL_logps, of each answer after another row's prompt: the previous row of its batch after the seeded shuffle
below (see PretokenizedKTOTrainer). Those pairs depend on `seed` and on the KTO batch size (`kto.*` and
compute.preset), so they cannot come from a stage that must not depend on the method; and TRL's
precompute_ref_log_probs reads both terms from the rows, with no way to precompute only the matched half."""
from trl import KTOConfig, KTOTrainer

from rlhf import models, tokenize, train


class PretokenizedKTOTrainer(KTOTrainer):
    """TRL 1.16's KTOTrainer tokenizes text unconditionally. Our rows arrive tokenized once, by the tokenize stage,
    and are unpaired here; preparation only adds the mismatched completions KTO's KL estimate uses, exactly as
    KTOTrainer does (each batch's completions rotated by one)."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if not self.calculate_KL:
            return dataset

        def rotate(batch):
            return {"KL_completion_ids": [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]}

        return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)


def unpair(dataset):
    """Desirable and undesirable rows, all desirable first: shuffle them so that batches mix both labels."""
    columns = dataset.column_names
    return dataset.map(tokenize.unpaired_columns, batched=True, remove_columns=columns)


def run(params, paths, out):
    section = train.start_method(params)
    train_rows = unpair(tokenize.load_split(paths.tokenized, "train", section.max_length)).shuffle(seed=params.seed)
    validation = unpair(tokenize.load_split(paths.tokenized, "validation", section.max_length))
    model = models.sft_merged(paths.base, paths.sft, params.model)
    return train.fit_method(params, paths, out, PretokenizedKTOTrainer, KTOConfig, train_rows, validation, model,
                            ref_model=None)
