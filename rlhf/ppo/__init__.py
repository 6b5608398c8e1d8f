"""The parts of our PPO (TRL 1.x has none), apart from its recipe rlhf/methods/ppo.py, which orchestrates them:

    functional.py  the math: masked statistics, KL-penalized rewards, adaptive KL, GAE, policy and value losses
    rollouts.py    the typed records (Experience, RolloutStats, UpdateStats), sampling and per-token forward passes
    critic.py      the policy with its value head, or a separate critic built from the reward model

They live outside rlhf/methods/ so that align's `rlhf/methods/${method}.py` dep stays one file per method (dvc.yaml)."""
