"""ORPO (Hong et al., 2024) with TRL's ORPOTrainer (trl.experimental): SFT loss plus an odds-ratio preference term
weighted by `orpo.beta`. ORPO folds SFT into the same stage, so by default it starts from the base model
(`orpo.init: base`); `init: sft` starts from the SFT model instead. Either way it trains a new LoRA adapter."""
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from rlhf import models, resuming, tokenize, train


class PretokenizedORPOTrainer(ORPOTrainer):
    """ORPOTrainer tokenizes text in `tokenize_row`; our rows arrive tokenized once, by the tokenize stage, so it
    only lays out the columns the trainer's collator expects."""

    def tokenize_row(self, feature, model=None):
        return tokenize.legacy_pair_columns(feature)


def run(params, tokenized, base_dir, sft_dir, reward_dir, reference_dir, out, checkpoints, live_dir):
    from transformers import set_seed

    set_seed(params.seed)
    section, lora, chosen = train.resolve(params, params.orpo, train.accelerator_memory_gb())
    print(f"orpo: settings after compute.preset: {chosen}")

    # -- data: the tokenize stage's rows as they are
    train_rows = tokenize.load_split(tokenized, "train", section.max_length).remove_columns("id")
    validation = tokenize.load_split(tokenized, "validation", section.max_length).remove_columns("id")

    # -- model: base (default) or SFT weights + a new adapter
    model = models.align_start(params, base_dir, sft_dir)
    report_to, callbacks = train.trackers(params.tracking, live_dir)
    resume = resuming.resume_point(checkpoints, [tokenized, base_dir, sft_dir, reward_dir],
                                   **resuming.align_sections(params, "orpo"))
    config = train.common_args(section, params, checkpoints, report_to)
    del config["init"]  # ours, not an ORPOConfig field
    trainer = PretokenizedORPOTrainer(
        model=model, args=ORPOConfig(**config), train_dataset=train_rows, eval_dataset=validation,
        processing_class=models.tokenizer(base_dir), peft_config=train.lora_config(lora, "CAUSAL_LM"),
        callbacks=callbacks)
    metrics = train.fit(trainer, out, len(train_rows), resume)
    return {**metrics, **chosen}, trainer.model
