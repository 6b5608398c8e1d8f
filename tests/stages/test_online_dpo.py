"""online_dpo on the tiny fixture: two rounds through the align stage leave both rounds' pairs and counts; the
reference stays the SFT model in every round; a rerun after a kill keeps the finished rounds."""
import dataclasses
import json
import shutil

import torch

from rlhf import config, models, resuming, scoring
from rlhf.methods import online_dpo
from rlhf.paths import layout
from tests.conftest import TINY, repo_section, write_params
from tests.stages.test_align import run_align


def test_two_rounds_end_to_end_write_both_rounds_pairs(tiny_trained, tmp_path):
    work = run_align(tiny_trained, tmp_path, "online_dpo", **{"online_dpo.min_margin": 0.5})
    out, metrics = work / "models/policy", json.loads((work / "metrics/align.json").read_text())
    assert metrics["steps"] == 2 * TINY["online_dpo.max_steps"]
    for r in ("1", "2"):
        rows = [json.loads(line) for line in (out / "rounds" / r / "pairs.jsonl").read_text().splitlines()]
        data = json.loads((out / "rounds" / r / "data.json").read_text())
        assert data["pairs"] == len(rows) > 0 and data["pairs"] + data["dropped_under_margin"] == data["prompts"]
        assert data["answers"] == data["prompts"] * TINY["online_dpo.samples_per_prompt"]
        assert all(row["chosen_reward"] - row["rejected_reward"] >= 0.5 for row in rows)
        assert {"prompt", "chosen", "rejected", "id", "chosen_ids", "rejected_ids"} <= set(rows[0])
        assert metrics["rounds"][r]["pairs"] == len(rows) and metrics["rounds"][r]["steps"] == 2
    # the curves go on across rounds: one DVCLive step per logged entry of both rounds' trainers
    steps = [int(line.split("\t")[0]) for line in (work / "dvclive/align/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    assert len(steps) == 2 * TINY["online_dpo.max_steps"] and steps == sorted(set(steps)) and steps[-1] > steps[1] + 1
    assert not (out / "ref").exists()  # TRL's copy of the adapter as reference was dropped, not saved
    assert not (work / "checkpoints/align").exists()


def test_the_reference_of_a_later_round_is_the_sft_model(tiny_trained, tmp_path):
    """The reference log-probs a round trains against are the SFT model's, not the last round's policy's."""
    work = run_align(tiny_trained, tmp_path, "online_dpo")
    cfg = repo_section("model")
    policy = models.policy(work / "models/base", work / "models/sft", work / "models/policy", cfg)
    sft = models.sft_merged(work / "models/base", work / "models/sft", cfg).eval()
    rows = [json.loads(line) for line in (work / "models/policy/rounds/2/pairs.jsonl").read_text().splitlines()]
    pad = models.tokenizer(work / "models/base").pad_token_id
    reference = online_dpo.with_reference(policy, rows, pad, batch_size=8)
    prompts = [row["prompt_ids"] for row in rows]
    for key in ("chosen", "rejected"):
        expected = scoring.completion_logprobs(sft, prompts, [row[f"{key}_ids"] for row in rows], pad)[0]
        torch.testing.assert_close(torch.tensor(reference[f"ref_{key}_logps"]), expected)
        trained = scoring.completion_logprobs(policy, prompts, [row[f"{key}_ids"] for row in rows], pad)[0]
        assert not torch.allclose(trained, expected)  # the policy has moved: the check above can tell them apart


def test_a_rerun_keeps_finished_rounds_and_resumes_the_one_in_progress(tiny_trained, tmp_path, monkeypatch):
    """Killed in round 2 (after its pairs and a checkpoint were written): the rerun neither samples nor trains round 1
    again, trains round 2 on the pairs it had, from its checkpoint, and ends as the run that was not killed."""
    params = config.load(write_params(tmp_path / "params.yaml", {**TINY, "method": "online_dpo"}))
    params = dataclasses.replace(params, method="online_dpo")
    checkpoints = tmp_path / "checkpoints"
    sampled, trained = [], []
    make_round, train_round = online_dpo.make_round, online_dpo.train_round
    monkeypatch.setattr(online_dpo, "make_round", lambda *a: sampled.append(a[-1]) or make_round(*a))
    monkeypatch.setattr(online_dpo, "train_round", lambda *a: trained.append(a[-1].name) or train_round(*a))

    def run(out):
        paths = layout().under(tiny_trained).replace(align_checkpoints=checkpoints, align_live=tmp_path / "live" / out)
        (tmp_path / out).mkdir()
        metrics, _ = online_dpo.run(params, paths, tmp_path / out)
        return {k: v for k, v in metrics.items() if k != "train_seconds"}

    whole = run("whole")
    assert sampled == [1, 2] and trained == ["round-1", "round-2"]
    round_2 = checkpoints / "round-2"
    (round_2 / online_dpo.DONE).unlink()
    shutil.rmtree(round_2 / "adapter")
    assert resuming.complete_checkpoints(round_2 / "trainer")  # a checkpoint to resume from
    sampled.clear(), trained.clear()
    resumed = run("resumed")
    assert sampled == [] and trained == ["round-2"]
    assert resumed == whole
    assert (tmp_path / "resumed/adapter_model.safetensors").read_bytes() == \
        (tmp_path / "whole/adapter_model.safetensors").read_bytes()
    assert (tmp_path / "resumed/rounds/1/pairs.jsonl").read_bytes() == (tmp_path / "whole/rounds/1/pairs.jsonl").read_bytes()
