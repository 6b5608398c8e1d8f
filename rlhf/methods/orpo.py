"""ORPO (Hong et al., 2024) with TRL's ORPOTrainer (trl.experimental): SFT loss plus an odds-ratio preference term
weighted by `orpo.beta`. ORPO folds SFT into the same stage, so by default it starts from the base model
(`orpo.init: base`); `init: sft` starts from the SFT model instead. Either way it trains a new LoRA adapter."""
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from rlhf import models, tokenize, train


class PretokenizedORPOTrainer(ORPOTrainer):
    """ORPOTrainer tokenizes text in `tokenize_row`; our rows arrive tokenized once, by the tokenize stage, so it
    only lays out the columns the trainer's collator expects."""

    def tokenize_row(self, feature, model=None):
        return tokenize.legacy_pair_columns(feature)


def run(params, paths, out):
    section = train.start_method(params)
    # -- data: the tokenize stage's rows as they are
    train_rows = tokenize.load_split(paths.tokenized, "train", section.max_length).remove_columns("id")
    validation = tokenize.load_split(paths.tokenized, "validation", section.max_length).remove_columns("id")
    # -- model: base (default) or SFT weights + a new adapter
    model = models.align_start(params, paths.base, paths.sft)
    return train.fit_method(params, paths, out, PretokenizedORPOTrainer, ORPOConfig, train_rows, validation, model,
                            drop=("init",))  # ours, not an ORPOConfig field
