"""Reward-model ensembles (`reward.ensemble`): a size-2 reward stage on the tiny models trains two members on their own
resamples, saves them in one folder that one load scores with, their disagreement reaches evaluate, and a run that
died after its first member does not train that member again."""
import json
import shutil

import pytest
import torch

from rlhf import evaluate, models, reward, scoring, tokenize
from rlhf.ppo import rollouts
from rlhf.ppo.critic import critic_from_reward_model
from tests.conftest import TINY, evaluate_stages, repo_section, run_stage, write_params
from tests.stages.test_align import run_align
from tests.stages.test_models import assert_all_placed, watched

ENSEMBLE = {**TINY, "reward.ensemble.members": 2}


def reward_stage(root, tiny_trained, overrides: dict, reward_dir: str = "models/reward") -> None:
    """The reward stage in `root` on the tiny data and SFT model, with `overrides` on the tiny params."""
    for name in ("data", "models/base", "models/sft"):
        if not (root / name).exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(tiny_trained / name)
    write_params(root / "params.yaml", overrides)
    run_stage(root, "reward", "--tokenized", "data/tokenized", "--base", "models/base", "--sft", "models/sft",
              "--reward", reward_dir, "--reward-metrics", "metrics/reward.json", "--reward-live", "dvclive/reward",
              "--reward-checkpoints", "checkpoints/reward")


@pytest.fixture(scope="module")
def ensemble(tiny_trained, tmp_path_factory):
    """A size-2 reward stage's folder, with the training rows each member was given ({member: ids})."""
    root = tmp_path_factory.mktemp("ensemble")
    given = {}
    choose = reward.member_rows
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reward, "member_rows", lambda rows, ensemble, member, seed: given.setdefault(
            member, choose(rows, ensemble, member, seed)))
        reward_stage(root, tiny_trained, ENSEMBLE)
    return root, {member: list(rows["id"]) for member, rows in given.items()}


def validation_answers(root, count: int = 12):
    """(prompts, answers) of `count` validation pairs: their chosen and rejected answers, as ended answers."""
    rows = tokenize.load_split(root / "data/tokenized", "validation", 10**9).select(range(count // 2))
    return list(rows["prompt_ids"]) * 2, list(rows["chosen_ids"]) + list(rows["rejected_ids"])


def ensemble_score(root, reward_dir):
    model, stats = models.reward_model(root / "models/base", root / "models/sft", reward_dir, repo_section("model"))
    tokenizer = models.tokenizer(root / "models/base")
    score = scoring.reward_function(model, stats, tokenizer, (-1, []), 8)  # (-1, []): the answers are scored as given
    return score(*validation_answers(root)), model, stats


def test_size_two_trains_two_members_on_their_own_resamples(ensemble):
    root, given = ensemble
    train_ids = list(tokenize.load_split(root / "data/tokenized", "train", 10**9)["id"])
    assert sorted(given) == [0, 1]
    for ids in given.values():  # a bootstrap resample: as many rows, drawn with replacement from the training rows
        assert len(ids) == len(train_ids) and len(set(ids)) < len(ids) and set(ids) <= set(train_ids)
    assert given[0] != given[1]
    metrics = json.loads((root / "metrics/reward.json").read_text())
    listing = json.loads((root / "models/reward" / models.REWARD_ENSEMBLE_FILE).read_text())
    assert listing["members"] == ["member-0", "member-1"] and listing["seeds"] == [0, 1]
    for i in (0, 1):
        stats = json.loads((root / f"models/reward/member-{i}" / reward.STATS_FILE).read_text())
        assert metrics[f"member_{i}_accuracy"] == stats["accuracy"]
    assert metrics["accuracy"] == metrics["member_0_accuracy"]  # the top-level numbers are member 0's
    assert metrics["ensemble_accuracy"] == listing["accuracy"]


def test_equal_members_do_not_disagree_and_trained_ones_do(ensemble, tmp_path):
    """Two members loaded from the same adapter: std exactly 0 and the mean is that member's score. The trained pair:
    std > 0 on every answer, and scores that differ in order, not just in scale."""
    root, _ = ensemble
    same = tmp_path / "same"
    shutil.copytree(root / "models/reward", same)
    shutil.rmtree(same / "member-1")
    shutil.copytree(same / "member-0", same / "member-1")
    twins, _, _ = ensemble_score(root, same)
    assert torch.equal(twins.std, torch.zeros(12))
    torch.testing.assert_close(twins.members[:, 0], twins.members[:, 1], rtol=0, atol=0)
    trained, _, _ = ensemble_score(root, root / "models/reward")
    assert (trained.std > 0).all()
    # and not only because each member is normalized by its own stats: their scores are not one affine function
    # of the other, as they would be if both columns came from one member's adapter
    assert torch.corrcoef(trained.members.T)[0, 1] < 0.999
    torch.testing.assert_close(trained.members[:, 0], twins.members[:, 0])  # member 0 is member 0 either way


def test_each_member_scores_with_its_own_adapter_and_score_head(ensemble):
    """On one scorer with both adapters, switching the active adapter switches the score head's copy too
    (modules_to_save): each member scores as that member loaded alone."""
    from peft import PeftModel

    root, _ = ensemble
    scores, model, stats = ensemble_score(root, root / "models/reward")
    heads = [model.base_model.model.score.modules_to_save[s["adapter"]].weight for s in stats]
    assert not torch.equal(heads[0], heads[1])
    prompts, answers = validation_answers(root)
    sequences = [p + a for p, a in zip(prompts, answers)]
    for j, member in enumerate(stats):
        trunk = models.scorer(root / "models/base", root / "models/sft", repo_section("model"))
        alone = PeftModel.from_pretrained(trunk, root / "models/reward" / member["adapter"])
        raw = scoring.reward_scores(alone.eval(), sequences, pad_id=0)
        normalized = (raw - member["score_mean"]) / member["score_std"]
        torch.testing.assert_close(scores.members[:, j], normalized, atol=1e-5, rtol=1e-5)


def test_an_ensemble_loads_the_base_weights_once(ensemble, monkeypatch):
    root, _ = ensemble
    with watched(monkeypatch) as seen:
        model, stats = models.reward_model(root / "models/base", root / "models/sft", root / "models/reward",
                                           repo_section("model"))
    assert_all_placed(seen, 1)
    assert sorted(model.peft_config) == ["member-0", "member-1"] and len(stats) == 2


def test_a_member_finished_before_a_kill_is_not_trained_again(ensemble, tiny_trained, tmp_path, monkeypatch):
    """The run dies in member 1; the rerun takes member 0 from checkpoints/reward, trains only member 1, and ends
    with the same members, byte for byte, as the run that did not die."""
    root, _ = ensemble
    trained = []
    fit = reward.train_member

    def dies_in_member_1(params, paths, out, member, *args):
        if member == 1:
            raise KeyboardInterrupt("killed")
        return fit(params, paths, out, member, *args)

    monkeypatch.setattr(reward, "train_member", dies_in_member_1)
    with pytest.raises(KeyboardInterrupt):
        reward_stage(tmp_path, tiny_trained, ENSEMBLE)
    assert not (tmp_path / "models/reward").exists()
    monkeypatch.setattr(reward, "train_member", lambda params, paths, out, member, *args: trained.append(member) or
                        fit(params, paths, out, member, *args))
    reward_stage(tmp_path, tiny_trained, ENSEMBLE)
    assert trained == [1]
    for member in ("member-0", "member-1"):
        for name in ("adapter_model.safetensors", reward.STATS_FILE):
            assert (tmp_path / "models/reward" / member / name).read_bytes() == \
                (root / "models/reward" / member / name).read_bytes(), (member, name)
    whole, resumed = (json.loads((r / "metrics/reward.json").read_text()) for r in (root, tmp_path))
    whole.pop("train_seconds"), resumed.pop("train_seconds")
    assert resumed == whole
    assert (tmp_path / "dvclive/reward/plots/metrics/loss.tsv").exists()  # member 0's curves came back with it
    assert not (tmp_path / "checkpoints/reward").exists()


def test_separate_ppo_critic_of_an_ensemble_starts_from_member_0(ensemble):
    """With k > 1 members, PPO's separate critic is member 0 merged into a copy of the scorer: its first values are
    member 0's normalized scores, and the scorer keeps every member, scoring as before."""
    from rlhf import config, train

    root, _ = ensemble
    params = config.load(root / "params.yaml")
    _, lora, _ = train.resolve(params, params.sft, None)
    before, scorer, stats = ensemble_score(root, root / "models/reward")
    ids = torch.tensor([[5, 17, 23, 42, 7, 99, 3]])
    prefixes = [ids[0, : p + 1].tolist() for p in range(2, 6)]
    with models.active_adapter(scorer, "member-0"):
        member_0 = (scoring.reward_scores(scorer, prefixes, pad_id=0) - stats[0]["score_mean"]) / stats[0]["score_std"]
    critic, head, scorer, stats = critic_from_reward_model(params, scorer, lora, stats)
    with torch.no_grad():
        values = rollouts.critic_values(critic, head, ids, torch.ones_like(ids), torch.tensor([2]), 4)
    torch.testing.assert_close(values[0], member_0, atol=1e-4, rtol=1e-4)
    tokenizer = models.tokenizer(root / "models/base")
    after = scoring.reward_function(scorer, stats, tokenizer, (-1, []), 8)(*validation_answers(root))
    torch.testing.assert_close(after.members, before.members)


def test_evaluate_reports_the_ensemble_and_its_disagreement(ensemble, tiny_trained, tmp_path):
    """sft_answers and evaluate on a size-2 reward model: each SFT answer's std is stored, and eval.json has the
    ensemble's and the weakest member's accuracy, the mean std of each model's answers and its rise."""
    root, _ = ensemble
    work = run_align(tiny_trained, tmp_path, "dpo", **{"eval.num_prompts": 8, "eval.num_samples": 2})
    evaluate_stages(work, reward=str(root / "models/reward"))
    metrics = json.loads((work / "metrics/eval.json").read_text())
    reward_metrics = json.loads((root / "metrics/reward.json").read_text())
    assert metrics["rm_ensemble_accuracy"] == reward_metrics["ensemble_accuracy"]
    assert metrics["rm_member_min_accuracy"] == min(reward_metrics["member_0_accuracy"],
                                                    reward_metrics["member_1_accuracy"])
    assert metrics["rm_std_sft"] > 0 and metrics["rm_std_policy"] > 0
    assert metrics["rm_uncertainty_rise"] == pytest.approx(metrics["rm_std_policy"] - metrics["rm_std_sft"], abs=2e-6)
    assert "gate_rm_uncertainty_rise" in metrics
    from datasets import load_from_disk

    stds = load_from_disk(str(work / "data/sft_answers"))["answers"]["rm_std"]
    assert len(stds) == 8 and sum(stds) / 8 == pytest.approx(metrics["rm_std_sft"], abs=1e-5)


def test_uncertainty_metrics_hand_computed():
    """Members' stds 0.1, 0.3 on SFT's answers (mean 0.2) and 0.5, 0.7 on the policy's (mean 0.6): rise 0.4."""
    sides = {"sft": {"rm_std": torch.tensor([0.1, 0.3])}, "policy": {"rm_std": torch.tensor([0.5, 0.7])}}
    out = evaluate.uncertainty_metrics(sides, [{"accuracy": 0.8}, {"accuracy": 0.7}], {"accuracy": 0.85})
    assert out == pytest.approx({"rm_ensemble_accuracy": 0.85, "rm_member_min_accuracy": 0.7, "rm_std_sft": 0.2,
                                 "rm_std_policy": 0.6, "rm_uncertainty_rise": 0.4})


def test_ppo_trains_on_an_ensemble_with_sft_sample_normalization(ensemble):
    """PPO with a separate critic and rewards normalized on SFT samples, per member, runs on a size-2 ensemble."""
    import math

    from tests.stages.test_ppo import run_ppo

    root, _ = ensemble
    _, metrics, _ = run_ppo(root, "ppo-ensemble", num_iterations=1, critic="separate",
                            reward_normalization="sft_samples")
    assert metrics["iterations"] == 1 and math.isfinite(metrics["score_normalized"])
    assert (root / "ppo-ensemble/critic/adapter_model.safetensors").exists()
