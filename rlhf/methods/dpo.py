"""DPO (Rafailov et al., 2023) with TRL's DPOTrainer, and its loss variants through `dpo.loss_type` (sigmoid, ipo,
hinge, ...). The policy is the SFT model plus a new LoRA adapter; with the adapter disabled the same weights are the
reference, so no second copy is loaded."""
from trl import DPOConfig, DPOTrainer

from rlhf import base, policy, resuming, train


class PretokenizedDPOTrainer(DPOTrainer):
    """TRL 1.16's DPOTrainer tokenizes text columns unconditionally. Our rows arrive tokenized once, by the tokenize
    stage, in exactly the columns its preparation produces (prompt_ids, chosen_ids, rejected_ids), and every row
    fits max_length (train.load_split checks), so preparation is the identity here."""

    def _prepare_dataset(self, dataset, *args, **kwargs):
        return dataset


def run(params, tokenized, base_dir, sft_dir, reward_dir, out, checkpoints, live_dir):
    from transformers import set_seed

    set_seed(params.seed)
    section, lora, chosen = train.resolve(params, params.dpo, train.accelerator_memory_gb())
    print(f"dpo: settings after compute.preset: {chosen}")

    # -- data: the tokenize stage's rows as they are
    train_rows = train.load_split(tokenized, "train", section.max_length).remove_columns("id")
    validation = train.load_split(tokenized, "validation", section.max_length).remove_columns("id")

    # -- model: SFT weights + new adapter; reference = adapter disabled
    model = policy.load_sft_merged(base_dir, sft_dir, params.model)
    report_to, callbacks = train.trackers(params.tracking, live_dir)
    resume = resuming.resume_point(checkpoints, [tokenized, base_dir, sft_dir, reward_dir],
                                   **resuming.align_sections(params, "dpo"))
    config = train.common_args(section, params, checkpoints, report_to)
    config["loss_type"] = [section.loss_type] if isinstance(section.loss_type, str) else section.loss_type
    trainer = PretokenizedDPOTrainer(
        model=model, ref_model=None, args=DPOConfig(**config), train_dataset=train_rows, eval_dataset=validation,
        processing_class=base.load_tokenizer(base_dir), peft_config=train.lora_config(lora, "CAUSAL_LM"),
        callbacks=callbacks)
    train.trainable_in_float32(trainer.model)
    metrics = train.fit(trainer, out, len(train_rows), resume)
    return {**metrics, **chosen}, trainer.model
