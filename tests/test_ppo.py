"""PPO: GAE, the clipped losses and the KL-penalized rewards on hand-computed values; a smoke run on the tiny model
whose adapter loads back, whose reference is the SFT model, and which is deterministic."""
import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch

from rlhf import align, config, policy, reward
from rlhf.config import Model
from rlhf.methods import ppo
from conftest import TINY, run_stage, write_params

# Two answers of 3 and 2 tokens; the second row's last column is padding.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


# -- GAE -------------------------------------------------------------------------------------------------------------

REWARDS = torch.tensor([[1.0, 0.0, 2.0], [0.5, 3.0, 7.0]])  # 7 and 9 sit on padding: they must not count
VALUES = torch.tensor([[0.5, 1.0, 1.0], [1.0, 2.0, 9.0]])


def test_gae_hand_computed():
    """gamma = lam = 0.5, so gamma * lam = 0.25; V = 0 past the last token.

    row 1: t=2  delta = 2 + 0.5*0 - 1   = 1     A = 1
           t=1  delta = 0 + 0.5*1 - 1   = -0.5  A = -0.5 + 0.25*1     = -0.25
           t=0  delta = 1 + 0.5*1 - 0.5 = 1     A = 1 + 0.25*(-0.25)  = 0.9375
           returns = A + V = 1.4375, 0.75, 2
    row 2: t=1  delta = 3 + 0 - 2       = 1     A = 1
           t=0  delta = 0.5 + 0.5*2 - 1 = 0.5   A = 0.5 + 0.25*1      = 0.75
           returns = 1.75, 3; padding gives 0.
    """
    advantages, returns = ppo.gae(REWARDS, VALUES, MASK, gamma=0.5, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[0.9375, -0.25, 1.0], [0.75, 1.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[1.4375, 0.75, 2.0], [1.75, 3.0, 0.0]]))


def test_gae_lambda_one_is_discounted_return_minus_value():
    """lam = 1: A_t = sum_k gamma^k r_{t+k} - V_t. With gamma = 0.5:
    row 1: G = (1 + 0.5*0 + 0.25*2, 0 + 0.5*2, 2) = (1.5, 1, 2), A = G - V = (1, 0, 1)
    row 2: G = (0.5 + 0.5*3, 3) = (2, 3), A = (1, 1); returns = G."""
    advantages, returns = ppo.gae(REWARDS, VALUES, MASK, gamma=0.5, lam=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[1.5, 1.0, 2.0], [2.0, 3.0, 0.0]]))


def test_gae_lambda_zero_is_one_step_td():
    """lam = 0: A_t = r_t + gamma V_{t+1} - V_t. With gamma = 0.5:
    row 1: (1 + 0.5 - 0.5, 0 + 0.5 - 1, 2 + 0 - 1) = (1, -0.5, 1); row 2: (0.5 + 1 - 1, 3 + 0 - 2) = (0.5, 1)."""
    advantages, _ = ppo.gae(REWARDS, VALUES, MASK, gamma=0.5, lam=0.0)
    torch.testing.assert_close(advantages, torch.tensor([[1.0, -0.5, 1.0], [0.5, 1.0, 0.0]]))


def test_gae_gamma_one_lambda_one_gives_reward_to_go():
    """gamma = lam = 1: returns are the plain sums of the rewards still to come (row 1: 3, 2, 2; row 2: 3.5, 3)."""
    _, returns = ppo.gae(REWARDS, VALUES, MASK, gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, torch.tensor([[3.0, 2.0, 2.0], [3.5, 3.0, 0.0]]))


# -- losses ----------------------------------------------------------------------------------------------------------

def test_policy_loss_hand_computed_with_clipping():
    """clip_range 0.2, so ratios are clipped to [0.8, 1.2]; per token max(-A rho, -A clip(rho)):

    rho 1.1, A  1: max(-1.1, -1.1) = -1.1   inside the range           gradient -A rho / 5 = -0.22
    rho 1.5, A  2: max(-3.0, -2.4) = -2.4   clipped                    gradient 0
    rho 0.5, A -1: max( 0.5,  0.8) =  0.8   clipped                    gradient 0
    rho 0.5, A  1: max(-0.5, -0.8) = -0.5   outside, but unclipped wins (pessimistic bound)  gradient -0.1
    rho 1.5, A -1: max( 1.5,  1.2) =  1.5   outside, but unclipped wins                     gradient +0.3
    loss = (-1.1 - 2.4 + 0.8 - 0.5 + 1.5) / 5 = -0.34; clip fraction 2/5. Padding has a wild ratio; it must not count.
    """
    old_logp = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.1, 1.5, 0.5], [0.5, 1.5, 100.0]])).requires_grad_()
    advantages = torch.tensor([[1.0, 2.0, -1.0], [1.0, -1.0, 5.0]])
    loss, clip_fraction = ppo.policy_loss(logp, old_logp, advantages, MASK, clip_range=0.2)
    assert loss.item() == pytest.approx(-0.34)
    assert clip_fraction.item() == pytest.approx(0.4)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.22, 0.0, 0.0], [-0.1, 0.3, 0.0]]))


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    advantages = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 5.0, 6.0]])
    loss, clip_fraction = ppo.policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), advantages, MASK, 0.2)
    assert loss.item() == pytest.approx(-(1 + 2 + 3 - 4 + 5) / 5) and clip_fraction.item() == 0


def test_value_loss_hand_computed_with_clipping():
    """clip_range_value 0.2; per token max((V - R)^2, (old + clip(V - old, -0.2, 0.2) - R)^2):

    old 1, V 1.1,  R 2: max(0.81, (1.1 - 2)^2 = 0.81) = 0.81   inside the range
    old 1, V 1.5,  R 2: max(0.25, (1.2 - 2)^2 = 0.64) = 0.64   clipped one is worse: it counts
    old 1, V 1.5,  R 1: max(0.25, (1.2 - 1)^2 = 0.04) = 0.25
    old 0, V -1,   R 0: max(1.00, (-0.2)^2    = 0.04) = 1
    loss = 0.5 * (0.81 + 0.64 + 0.25 + 1) / 4 = 0.3375 (padding ignored)."""
    values = torch.tensor([[1.1, 1.5, 1.5], [-1.0, 0.0, 50.0]])
    old_values = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert ppo.value_loss(values, old_values, returns, mask, 0.2).item() == pytest.approx(0.3375)


def test_kl_penalty_rewards_hand_computed():
    """kl_coef 0.1; r_t = -0.1 (logp - ref_logp), plus the score on the last answer token:
    row 1: logp - ref = (0.5, -1, 0)  -> (-0.05, 0.1, 0 + 2)  = (-0.05, 0.1, 2)
    row 2: logp - ref = (1, -2, pad)  -> (-0.1, 0.2 - 1, 0)   = (-0.1, -0.8, 0)"""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -3.0, 0.0]])
    ref_logp = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, 5.0]])
    rewards = ppo.kl_penalty_rewards(torch.tensor([2.0, -1.0]), logp, ref_logp, MASK, kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 2.0], [-0.1, -0.8, 0.0]]))


# -- statistics ------------------------------------------------------------------------------------------------------

def test_masked_whiten_has_mean_zero_and_std_one_on_the_mask():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)) * 3 + 5
    mask = (torch.arange(6)[None] < torch.tensor([[6], [2], [4], [1]])).float()
    white = ppo.masked_whiten(x, mask)
    kept = white[mask.bool()]
    assert kept.mean().item() == pytest.approx(0, abs=1e-6)
    assert kept.std(unbiased=False).item() == pytest.approx(1, abs=1e-5)
    assert (white[~mask.bool()] == 0).all()
    assert ppo.masked_mean(x, mask).item() == pytest.approx(x[mask.bool()].mean().item())


def test_explained_variance():
    """returns 1, 2, 3, 4 (variance 1.25); values 1, 2, 3, 3 leave residuals 0, 0, 0, 1 (variance 3/16):
    1 - 0.1875 / 1.25 = 0.85."""
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    assert ppo.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert ppo.explained_variance(torch.full_like(returns, 2.5), returns, mask).item() == pytest.approx(0.0)
    values = torch.tensor([[1.0, 2.0, 3.0, 3.0, -7.0]])
    assert ppo.explained_variance(values, returns, mask).item() == pytest.approx(0.85)


def test_entropy_from_logits():
    """Uniform over 4: log 4. Logits (0, log 3): p = (1/4, 3/4), H = -(1/4 log 1/4 + 3/4 log 3/4)."""
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3), -1e9, -1e9]])  # -1e9: probability 0
    expected = [math.log(4), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    assert ppo.entropy_from_logits(logits).tolist() == pytest.approx(expected)


def test_rollout_tensors_line_answers_up():
    """Prompt (5, 6, 7) + answer (8, 9): logits at position 2 predict the answer's first token, 8."""
    batch = ppo.rollout_tensors([[5, 6, 7], [5]], [[8, 9], [10, 11, 12]], pad_id=0)
    assert batch["ids"].tolist() == [[5, 6, 7, 8, 9], [5, 10, 11, 12, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["starts"].tolist() == [2, 0]
    assert batch["mask"].tolist() == [[1, 1, 0], [1, 1, 1]]


class LastTokenScorer(torch.nn.Module):
    """A stand-in reward model: the score of a sequence is its last non-padding token id."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        last = input_ids.gather(1, attention_mask.sum(1, keepdim=True) - 1)
        return SimpleNamespace(logits=last.float())


def test_reward_function_scores_ended_answers_with_the_turn_end():
    """End of turn 2, then the template writes 9. Prompt (1, 2) + answer (5, 2) ended: scored as (1, 2, 5, 2, 9),
    score 9. Prompt (3) + answer (6, 7) was cut off: scored as it is, score 7. Normalized with mean 1, std 2:
    (9-1)/2 = 4, (7-1)/2 = 3."""
    tokenizer = SimpleNamespace(pad_token_id=0)
    score = reward.reward_function(LastTokenScorer(), {"score_mean": 1.0, "score_std": 2.0}, tokenizer, (2, [9]), 8)
    raw, normalized = score([[1, 2], [3]], [[5, 2], [6, 7]])
    assert raw.tolist() == [9, 7] and normalized.tolist() == [4, 3]


# -- smoke run on the tiny model -------------------------------------------------------------------------------------

SMOKE = {"num_iterations": 3, "rollout_batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 2, "max_new_tokens": 8,
         "save_steps": 2, "learning_rate": 1e-2}


def run_ppo(root, name: str, checkpoints: str | None = None, **overrides):
    params = config.load(root / "params.yaml")
    params = dataclasses.replace(params, ppo=dataclasses.replace(params.ppo, **(SMOKE | overrides)))
    metrics, model = ppo.run(params, root / "data/tokenized", root / "models/base", root / "models/sft",
                             root / "models/reward", root / name, root / "checkpoints" / (checkpoints or name),
                             root / "dvclive" / name)
    return params, metrics, model


@pytest.fixture(scope="module")
def smoke(tiny_trained):
    return tiny_trained, *run_ppo(tiny_trained, "ppo-smoke")


def test_smoke_metrics_and_outputs(smoke):
    root, params, metrics, model = smoke
    names = ("score", "score_normalized", "kl", "entropy", "policy_loss", "value_loss", "clip_fraction",
             "explained_variance", "response_length")
    assert all(math.isfinite(metrics[n]) for n in names), metrics
    assert metrics["iterations"] == 3 and 1 <= metrics["response_length"] <= 8
    out = root / "ppo-smoke"
    for name in ("adapter_model.safetensors", "adapter_config.json", ppo.VALUE_HEAD_FILE, "tokenizer.json"):
        assert (out / name).exists(), name
    checkpoint = root / "checkpoints/ppo-smoke/iter-2"
    assert (checkpoint / "adapter_model.safetensors").exists() and (checkpoint / ppo.VALUE_HEAD_FILE).exists()
    assert torch.load(checkpoint / ppo.TRAINER_STATE_FILE)["iteration"] == 2
    assert not (root / "checkpoints/ppo-smoke/iter-3").exists()  # save_steps 2
    assert (root / "dvclive/ppo-smoke/plots/metrics/kl.tsv").read_text().count("\n") == 1 + 3  # header + 3 rows
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # training moved the adapter off its zero init


def test_adapter_loads_back_with_same_logits(smoke):
    from peft import PeftModel

    root, params, _, model = smoke
    loaded = PeftModel.from_pretrained(
        policy.load_sft_merged(root / "models/base", root / "models/sft", Model()), root / "ppo-smoke").eval()
    ids = torch.tensor([[5, 17, 23, 42, 7, 99]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_reference_is_the_sft_model(smoke):
    """The adapter disabled gives the SFT model's log-probs; enabled, the trained policy's differ."""
    root, params, _, model = smoke
    sft_model = policy.load_sft_merged(root / "models/base", root / "models/sft", Model()).eval()
    ids, attention_mask = torch.tensor([[5, 17, 23, 42, 7, 99, 3]]), torch.ones(1, 7, dtype=torch.long)
    args = (ids, attention_mask, torch.tensor([2]), 4, 1.0)
    with torch.no_grad():
        with model.disable_adapter():
            ref_logp, _, _ = ppo.token_stats(model, None, *args)
        sft_logp, _, _ = ppo.token_stats(sft_model, None, *args)
        policy_logp, _, _ = ppo.token_stats(model, None, *args)
    torch.testing.assert_close(ref_logp, sft_logp)
    assert not torch.allclose(policy_logp, sft_logp)


def test_runs_are_deterministic(smoke):
    root, _, metrics, _ = smoke
    _, again, _ = run_ppo(root, "ppo-again")
    metrics, again = dict(metrics), dict(again)
    metrics.pop("train_seconds"), again.pop("train_seconds")
    assert metrics == again


def test_align_stage_runs_ppo(tiny_trained, tmp_path):
    """`method: ppo` through the align stage, in its own folder sharing the tiny data and models."""
    for name in ("data", "models/base", "models/sft", "models/reward"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(tiny_trained / name)
    write_params(tmp_path / "params.yaml", {**TINY, "method": "ppo", **{f"ppo.{k}": v for k, v in SMOKE.items()}})
    run_stage(tmp_path, "align", "--tokenized", "data/tokenized", "--base", "models/base", "--sft", "models/sft",
              "--reward", "models/reward", "--out", "models/policy", "--metrics", "metrics/align.json",
              "--live", "dvclive/align", "--checkpoints", "checkpoints/align")
    metrics = json.loads((tmp_path / "metrics/align.json").read_text())
    assert metrics["method"] == "ppo" and metrics["iterations"] == 3 and "oracle_gain" in metrics
    model = align.load_trained_policy(tmp_path / "models/base", tmp_path / "models/sft", tmp_path / "models/policy",
                                      Model())
    assert (tmp_path / "models/policy" / ppo.VALUE_HEAD_FILE).exists()
    ids = torch.tensor([[5, 17, 23, 42, 7]])
    with torch.no_grad():
        with model.disable_adapter():
            without = model(ids).logits
        assert not torch.allclose(model(ids).logits, without)  # the saved adapter is the trained one


def test_resume_from_a_checkpoint_equals_the_whole_run(smoke):
    """The smoke run (3 iterations) left a complete checkpoint at iteration 2. A run with the same params resumes
    there, skips a half-written iter-3, and ends with the whole run's adapter, value head, metrics and curves."""
    root, params, metrics, model = smoke
    half_written = root / "checkpoints/ppo-smoke/iter-3"
    half_written.mkdir()
    (half_written / "adapter_model.safetensors").write_bytes(b"cut off")
    _, resumed, _ = run_ppo(root, "ppo-resumed", checkpoints="ppo-smoke")
    assert {**resumed, "train_seconds": 0} == {**metrics, "train_seconds": 0}
    for name in ("adapter_model.safetensors", ppo.VALUE_HEAD_FILE):
        assert (root / "ppo-resumed" / name).read_bytes() == (root / "ppo-smoke" / name).read_bytes(), name
    curve = "dvclive/{}/plots/metrics/kl.tsv"
    assert (root / curve.format("ppo-resumed")).read_text() == (root / curve.format("ppo-smoke")).read_text()
    _, other, _ = run_ppo(root, "ppo-other", checkpoints="ppo-smoke", learning_rate=2e-2)  # other params: start over
    assert other["policy_loss"] != metrics["policy_loss"]
