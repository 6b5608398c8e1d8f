"""Your own reward functions for GRPO, RLOO and PPO, named in params.yaml as "rewards.<module>:<function>" with a
weight, e.g. `grpo.rewards.functions: {"rewards.example:polite": 0.5}`.

Each function takes TRL's reward-function arguments by name, `(prompts, completions, completion_ids, prompt_ids,
**kwargs)` (texts, texts, answer token ids, prompt token ids; take only what you use, plus **kwargs), and returns one
finite float per completion. The align stage declares this folder as a DVC dependency: editing a file here reruns
align. Functions elsewhere are refused, as DVC would not see their changes. See rlhf/rewards.py for the built-ins.
"""
