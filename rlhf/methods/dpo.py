"""DPO (Rafailov et al., 2023) with TRL's DPOTrainer, and its loss variants through `dpo.loss_type` (sigmoid, ipo,
hinge, ...). The policy is the SFT model plus a new LoRA adapter; the reference is the SFT model, whose log-probs of
every pair the reference stage computed once (data/reference), so a policy step runs no reference forward."""
from trl import DPOConfig, DPOTrainer

from rlhf import models, reference, tokenize, train


class PretokenizedDPOTrainer(DPOTrainer):
    """TRL 1.16's DPOTrainer tokenizes text columns unconditionally. Our rows arrive tokenized once, by the tokenize
    stage, in exactly the columns its preparation produces (prompt_ids, chosen_ids, rejected_ids), and every row
    fits max_length (tokenize.load_split checks), so preparation is the identity here.

    With precompute_ref_log_probs, DPOTrainer runs its own reference pass over the train and eval data when it is
    built (and in evaluate() on a dataset passed to it), to add the columns ref_chosen_logps and ref_rejected_logps.
    Our rows already carry them, from the reference stage, so that pass is skipped where they are present. (TRL
    still hashes the model's weights when it is built, the cache key of that pass: unused here, see README.)"""

    def _prepare_dataset(self, dataset, *args, **kwargs):
        return dataset

    def _precompute_ref_logps(self, dataset, name, batch_size):
        if set(reference.COLUMNS) <= set(dataset.column_names):
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)


def rows_with_reference(tokenized, reference_dir, split: str, max_length: int):
    """A tokenized split with the reference stage's log-probs of each pair, checked to be for the same rows."""
    rows = tokenize.load_split(tokenized, split, max_length)
    return reference.add_columns(rows, reference_dir, split).remove_columns("id")


def run(params, paths, out):
    section = train.start_method(params)
    # -- data: the tokenize stage's rows, with the reference stage's log-probs
    train_rows = rows_with_reference(paths.tokenized, paths.reference, "train", section.max_length)
    validation = rows_with_reference(paths.tokenized, paths.reference, "validation", section.max_length)
    # -- model: SFT weights + new adapter
    model = models.sft_merged(paths.base, paths.sft, params.model)
    loss_type = [section.loss_type] if isinstance(section.loss_type, str) else section.loss_type
    return train.fit_method(params, paths, out, PretokenizedDPOTrainer, DPOConfig, train_rows, validation, model,
                            config={"loss_type": loss_type, "precompute_ref_log_probs": True}, ref_model=None)
