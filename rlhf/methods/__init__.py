"""One module per alignment method, each exposing the same plain function:

    run(params, tokenized, base_dir, sft_dir, reward_dir, reference_dir, out, checkpoints, live_dir) -> (metrics, model)

which trains, saves the policy's LoRA adapter and tokenizer to `out`, and returns its metrics and the trained model.
`reference_dir` holds the reference stage's log-probs of every pair under the SFT model; only DPO reads them.
The align stage picks one by a dict lookup on `method` (rlhf/align.py)."""
