"""One module per alignment method, each exposing the same plain function:

    run(params, paths, out) -> (metrics, model)

which trains on the stage outputs named in `paths` (rlhf/paths.py), saves the policy's LoRA adapter and tokenizer to
`out`, and returns its metrics and the trained model. The methods built on a TRL trainer state their data, starting
model, trainer and config class, and share the rest (rlhf.train.fit_method); PPO's loop is ours (rlhf/ppo/). The
align stage picks one by a dict lookup on `method` (rlhf/align.py)."""
