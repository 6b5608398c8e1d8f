"""SimPO (Meng et al., 2024): a reference-free preference loss on length-normalized log-probabilities with a target
margin `simpo.simpo_gamma`, run as TRL's CPOTrainer (trl.experimental) with loss_type "simpo". `simpo.cpo_alpha`
adds CPO's NLL term (0: pure SimPO). Starts from the SFT model with a new LoRA adapter."""
from trl.experimental.cpo import CPOConfig, CPOTrainer

from rlhf import models, tokenize, train


class PretokenizedCPOTrainer(CPOTrainer):
    """CPOTrainer tokenizes text in `tokenize_row`; our rows arrive tokenized once, by the tokenize stage, so it
    only lays out the columns the trainer's collator expects."""

    def tokenize_row(self, feature, model=None):
        return tokenize.legacy_pair_columns(feature)


def run(params, paths, out):
    section = train.start_method(params)
    train_rows = tokenize.load_split(paths.tokenized, "train", section.max_length).remove_columns("id")
    validation = tokenize.load_split(paths.tokenized, "validation", section.max_length).remove_columns("id")
    model = models.sft_merged(paths.base, paths.sft, params.model)
    return train.fit_method(params, paths, out, PretokenizedCPOTrainer, CPOConfig, train_rows, validation, model,
                            config={"loss_type": "simpo"})
