"""rlhf.report: the results table's parsing and formatting on hand-made inputs, and docs/results.md against its
committed input (no DVC experiments needed)."""
import json
import math

import pytest
import yaml

from rlhf import align, paths, report
from tests.conftest import REPO, repo_params



def run_metrics(win: float, half: float = 0.05, **extra) -> dict:
    """eval.json-like metrics with every key the table reads; interval bounds at win -+ half."""
    metrics = {"gate_passed": True, "kl_policy_sft": 1.0, "length_policy": 14.0, "length_sft": 13.8,
               "oracle_mean_policy": 1.2, "oracle_mean_sft": 0.7}
    for key, rate in (("oracle_win_rate", win), ("oracle_win_rate_lc", win), ("rm_win_rate", 1 - win),
                      ("rm_win_rate_lc", 1 - win)):  # the reward model ranks the other way: the judge shows
        metrics |= {key: rate, f"{key}_ci_low": rate - half, f"{key}_ci_high": rate + half}
    for key in ("repetition", "distinct2", "empty_share", "cutoff_share", "fluency_perplexity"):
        metrics |= {f"{key}_policy": 0.1, f"{key}_sft": 0.2}
    return metrics | extra


def exp(method: str, seed: int, win: float, arm: str | None = None, **extra) -> dict:
    return {"name": f"{arm or method}-seed{seed}", "arm": arm or method, "method": method, "seed": seed,
            "metrics": run_metrics(win, **extra)}


def show_entry(name, method, seed, metrics) -> dict:
    """One experiment as `dvc exp show --json` writes it (dvc 3: ExpState.dumpd)."""
    return {"rev": f"{name}-sha", "name": name, "error": None, "experiments": None, "data": {
        "rev": f"{name}-sha", "timestamp": "2026-12-02T01:02:03",
        "params": {"params.yaml": {"data": {"method": method, "align": {"seed": seed}}}},
        "metrics": {"metrics/eval.json": {"data": metrics}} if metrics else {}}}


def test_experiments_keeps_compare_runs_with_metrics():
    show = [{"rev": "workspace", "name": None, "data": {}, "experiments": None},
            {"rev": "abcdef0123", "name": "report", "data": {}, "experiments": [
                {"revs": [show_entry("kto-seed1", "kto", 1, {"oracle_win_rate": 0.5})]},
                {"revs": [show_entry("dpo-seed0", "dpo", 0, {"oracle_win_rate": 0.6})]},
                {"revs": [show_entry("beta-sweep", "dpo", 0, {"oracle_win_rate": 0.7})]},  # not make compare's
                {"revs": [show_entry("orpo-seed0", "orpo", 0, None)]},  # failed: no metrics
                {"revs": [show_entry("ppo-seed0", "ppo", 0, {"oracle_win_rate": 0.8})],  # the workspace's metrics
                 "executor": {"state": "running", "name": "workspace"}}]}]
    found, baseline = report.experiments(show)
    assert [(e["name"], e["arm"], e["method"], e["seed"]) for e in found] == [("dpo-seed0", "dpo", "dpo", 0),
                                                                             ("kto-seed1", "kto", "kto", 1)]
    assert found[0]["metrics"] == {"oracle_win_rate": 0.6}
    assert baseline == "abcdef0123"


def test_pm_gives_sample_sd_and_a_dash_for_one_seed():
    assert report.pm([0.5, 0.6, 0.7]) == "0.600 ± 0.100"  # sample sd: sqrt((0.01 + 0 + 0.01) / 2) = 0.1
    assert report.pm([0.5]) == "0.500 ± –"


def test_noise_interval_adds_seed_and_prompt_noise():
    """sd 0.1 over 3 seeds: se_seeds^2 = 0.01 / 3. Interval half-width 1.96 * 0.05 in every run: se_prompts 0.05.
    half = 1.96 sqrt(0.01/3 + 0.0025) = 1.96 * 0.0763763 = 0.149695."""
    h = report.Z95 * 0.05
    low, high = report.noise_interval([0.5, 0.6, 0.7], [0.5 - h, 0.6 - h, 0.7 - h], [0.5 + h, 0.6 + h, 0.7 + h])
    assert low == pytest.approx(0.6 - 0.149695, abs=1e-6)
    assert high == pytest.approx(0.6 + 0.149695, abs=1e-6)
    # one seed: prompt noise alone
    assert report.noise_interval([0.5], [0.5 - h], [0.5 + h]) == pytest.approx((0.5 - h, 0.5 + h))


def test_inside_noise_is_overlap():
    assert report.inside_noise((0.5, 0.6), (0.55, 0.7))
    assert report.inside_noise((0.55, 0.7), (0.5, 0.6))
    assert not report.inside_noise((0.5, 0.6), (0.61, 0.7))


def table_rows(text: str) -> dict[str, list[str]]:
    """The methods table's rows by method name, as lists of cells."""
    section = text.split("## Methods against SFT")[1].split("## Degeneration")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    return {row[0]: row for row in rows[2:]}  # after the header and its --- line


def test_render_sorts_marks_noise_and_states_the_machine():
    """dpo 0.60 and kto 0.58 with intervals +-0.05: inside the noise. orpo 0.30: clearly lower than kto."""
    exps = [exp("orpo", s, 0.30, gate_passed=False) for s in (0, 1)] + \
           [exp("kto", s, 0.58) for s in (0, 1)] + [exp("dpo", s, w) for s, w in ((0, 0.59), (1, 0.61))]
    text = report.render({"machine": "AMD EPYC, 2 cores, no GPU", "date": "2026-12-02", "revision": "abc1234",
                          "experiments": exps})
    rows = table_rows(text)
    assert list(rows) == ["dpo", "kto", "orpo"]
    assert rows["dpo"][2] == "0.600 ± 0.014 [0.55, 0.65]"
    assert rows["dpo"][3] == ""
    assert rows["kto"][3] == "inside the noise"
    assert rows["orpo"][3] == "lower"
    assert rows["orpo"][-1] == "0 of 2" and rows["dpo"][-1] == "2 of 2"
    assert "AMD EPYC, 2 cores, no GPU" in text and "2026-12-02" in text and "`abc1234`" in text
    assert "| SFT | 0.200 |" in text


def test_render_falls_back_to_the_reward_model_without_an_oracle():
    exps = [exp("dpo", 0, 0.6), exp("kto", 0, 0.7)]
    for e in exps:
        e["metrics"] = {k: v for k, v in e["metrics"].items() if not k.startswith("oracle")}
    rows = table_rows(report.render({"machine": "m", "date": "d", "revision": "r", "experiments": exps}))
    assert list(rows) == ["dpo", "kto"]  # reward-model win rates 0.4 and 0.3
    assert rows["kto"][6] == "n/a"


def test_plan_queues_each_arm_and_seed_once():
    """A study's experiments, seed by seed, with the arm's settings and align.seed; names that exist are skipped."""
    lines = report.plan("ensemble", 2, existing={"grpo-seed0"})
    assert lines == [
        "grpo_ensemble-seed0 -S method=grpo -S reward.ensemble.members=4 -S grpo.rewards.aggregate=mean_minus_std "
        "-S align.seed=0",
        "grpo-seed1 -S method=grpo -S align.seed=1",
        "grpo_ensemble-seed1 -S method=grpo -S reward.ensemble.members=4 -S grpo.rewards.aggregate=mean_minus_std "
        "-S align.seed=1"]
    assert all(line.split()[0].startswith(m) for line, m in zip(report.plan("methods", 1, set()), report.METHODS))
    with pytest.raises(report.UserError, match="unknown study"):
        report.plan("ensembles", 1, set())


def test_a_study_gets_its_table_once_all_its_arms_ran():
    """grpo at oracle 0.5 (reward model 0.5: gap 0) and grpo_ensemble at 0.6 (reward model 0.4: gap -0.2); the study
    table sits below the method table, which lists methods only."""
    exps = [exp("grpo", s, 0.5, rm_std_policy=0.1, rm_std_sft=0.05) for s in (0, 1)]
    record = {"machine": "m", "date": "d", "revision": "r", "experiments": exps}
    assert "## GRPO: one reward model" not in report.render(record)  # one arm only: no study yet
    exps += [exp("grpo", s, 0.6, arm="grpo_ensemble", rm_std_policy=0.3, rm_std_sft=0.05) for s in (0, 1)]
    text = report.render(record)
    assert list(table_rows(text)) == ["grpo"]
    study = text.split("## GRPO: one reward model")[1]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in study.splitlines() if line.startswith("| grpo")}
    assert rows["grpo_ensemble"][4] == "-0.200 ± 0.000" and rows["grpo"][4] == "0.000 ± 0.000"
    assert rows["grpo_ensemble"][7] == "0.300 ± 0.000 (0.050)"


class Stop(Exception):
    pass


def test_align_trains_with_align_seed_not_the_top_level_seed(tmp_path, monkeypatch):
    """make compare's seeds vary the policy alone: every method reads params.seed, which the align stage sets to
    align.seed."""
    seen = []

    def method(params, paths, out):
        seen.append(params.seed)
        raise Stop

    monkeypatch.setattr(align, "method_runner", lambda name: method)
    with pytest.raises(Stop):
        align.run(repo_params({"seed": 5, "align.seed": 7}), paths.layout().under(tmp_path))
    assert seen == [7]


def test_only_align_onwards_reruns_for_a_new_align_seed():
    """align.seed is in the `align` section, which no stage before align declares, and align does not declare the
    top-level seed: a seed sweep restores SFT, the reward model, reference and sft_answers from the cache."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = {name: [p for p in stage.get("params", []) if isinstance(p, str)] for name, stage in stages.items()}
    assert [name for name, keys in declared.items() if "align" in keys or "align.seed" in keys] == ["align"]
    assert "seed" not in declared["align"]


def test_results_page_matches_its_committed_input():
    """docs/results.md is what `python -m rlhf.report --render` writes from metrics/experiments.json: regenerate it
    with that command (or `make report` after `make compare`) rather than editing it."""
    assert (REPO / report.INPUT).exists(), f"{report.INPUT} is missing: run `make compare` then `make report`"
    record = json.loads((REPO / report.INPUT).read_text())
    assert (REPO / report.OUTPUT).read_text() == report.render(record)
    assert not any(math.isnan(v) for e in record["experiments"] for v in e["metrics"].values()
                   if isinstance(v, float))


def test_collect_joins_the_experiments_of_several_baselines(monkeypatch):
    """--rev A --rev B: the experiments derived from both commits; a name in both is taken from the later one, and the
    record names both baselines."""
    from types import SimpleNamespace

    shows = {"aaaaaaa1": [{"rev": "aaaaaaa1", "name": None, "data": {}, "experiments": [
                 {"revs": [show_entry("dpo-seed0", "dpo", 0, {"oracle_win_rate": 0.6})]},
                 {"revs": [show_entry("kto-seed0", "kto", 0, {"oracle_win_rate": 0.5})]}]}],
             "bbbbbbb2": [{"rev": "bbbbbbb2", "name": None, "data": {}, "experiments": [
                 {"revs": [show_entry("kto-seed0", "kto", 0, {"oracle_win_rate": 0.55})]}]}]}

    def fake_run(command, **kwargs):
        return SimpleNamespace(returncode=0, stdout=json.dumps(shows[command[command.index("--rev") + 1]]))

    monkeypatch.setattr(report.subprocess, "run", fake_run)
    monkeypatch.setattr(report, "machine", lambda: "m")
    record = report.collect(["aaaaaaa1", "bbbbbbb2"])
    assert [(e["name"], e["metrics"]["oracle_win_rate"]) for e in record["experiments"]] == [("dpo-seed0", 0.6),
                                                                                          ("kto-seed0", 0.55)]
    assert record["revision"] == "aaaaaaa, bbbbbbb"
