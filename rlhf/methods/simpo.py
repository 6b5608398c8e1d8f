"""SimPO (Meng et al., 2024): a reference-free preference loss on length-normalized log-probabilities with a target
margin `simpo.simpo_gamma`, run as TRL's CPOTrainer (trl.experimental) with loss_type "simpo". `simpo.cpo_alpha`
adds CPO's NLL term (0: pure SimPO). Starts from the SFT model with a new LoRA adapter."""
from trl.experimental.cpo import CPOConfig, CPOTrainer

from rlhf import models, resuming, tokenize, train


class PretokenizedCPOTrainer(CPOTrainer):
    """CPOTrainer tokenizes text in `tokenize_row`; our rows arrive tokenized once, by the tokenize stage, so it
    only lays out the columns the trainer's collator expects."""

    def tokenize_row(self, feature, model=None):
        return tokenize.legacy_pair_columns(feature)


def run(params, tokenized, base_dir, sft_dir, reward_dir, reference_dir, out, checkpoints, live_dir):
    from transformers import set_seed

    set_seed(params.seed)
    section, lora, chosen = train.resolve(params, params.simpo, train.accelerator_memory_gb())
    print(f"simpo: settings after compute.preset: {chosen}")

    train_rows = tokenize.load_split(tokenized, "train", section.max_length).remove_columns("id")
    validation = tokenize.load_split(tokenized, "validation", section.max_length).remove_columns("id")

    model = models.sft_merged(base_dir, sft_dir, params.model)
    report_to, callbacks = train.trackers(params.tracking, live_dir)
    resume = resuming.resume_point(checkpoints, [tokenized, base_dir, sft_dir, reward_dir],
                                   **resuming.align_sections(params, "simpo"))
    config = train.common_args(section, params, checkpoints, report_to)
    trainer = PretokenizedCPOTrainer(
        model=model, args=CPOConfig(**config, loss_type="simpo"), train_dataset=train_rows, eval_dataset=validation,
        processing_class=models.tokenizer(base_dir), peft_config=train.lora_config(lora, "CAUSAL_LM"),
        callbacks=callbacks)
    metrics = train.fit(trainer, out, len(train_rows), resume)
    return {**metrics, **chosen}, trainer.model
