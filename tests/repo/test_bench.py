"""The benchmark's own arithmetic (the benchmark itself is not part of the tests: `python -m bench.run`)."""
from bench import padding, trainers


def test_pad_share_on_hand_computed_batches():
    """Rows of lengths 2, 4 | 3, 3 in batches of 2: slots 2*4 + 2*3 = 14, real tokens 12, so padding is 2/14. A DPO
    row (chosen, rejected) pads both sequences to the batch's longest: (1, 3) alone is 2 slots of 3, 2 padding."""
    assert padding.pad_share([(2,), (4,), (3,), (3,)], [0, 1, 2, 3], batch_size=2) == 1 - 12 / 14
    assert padding.pad_share([(1, 3)], [0], batch_size=1) == 1 - 4 / 6


def test_length_grouping_puts_similar_rows_together():
    keys = [1, 9, 2, 8, 3, 7, 4, 6] * 4
    orders = padding.orders(keys, group=4, seed=0, epochs=1)
    assert sorted(orders["random"]) == sorted(orders["group_by_length"]) == list(range(len(keys)))
    rows = [(k,) for k in keys]
    assert padding.pad_share(rows, orders["group_by_length"], 4) < padding.pad_share(rows, orders["random"], 4)


def test_ratio_is_ours_over_trl():
    ours = [{"steps": 10, "train_seconds": 5.0, "peak_rss_mib": 1.0}]
    trl = [{"steps": 10, "train_seconds": 4.0, "peak_rss_mib": 2.0}]
    result = trainers.summary(ours, trl)
    assert (result["ours_steps_per_second"], result["trl_steps_per_second"], result["ours_over_trl_ratio"]) == \
        (2.0, 2.5, 0.8)


def test_committed_bench_json_holds_no_machine_paths():
    """metrics/bench.json is committed and read on other machines: no value may be an absolute path of the machine
    that ran it (a checkout's folder, a temporary run folder); the git commit says which code ran."""
    import json
    import re

    from tests.conftest import REPO

    def strings(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node

    for path in (REPO / "metrics").glob("bench*.json"):
        machine_path = re.compile(r"(^|[\s'\"(=])/(tmp|work|home|root|Users|var)/")
        found = [s for s in strings(json.loads(path.read_text())) if machine_path.search(s)]
        assert not found, f"{path.name} holds machine paths: {found[:3]}"


def test_report_fills_a_block_from_the_json_and_names_a_missing_section():
    from bench import report
    bench = {"evaluate_cost": {"prompts_answered": 500, "max_new_tokens": 32, "inputs": "x", "oracle_win_rate": 0.62,
                               "oracle_win_rate_ci_half_width": 0.042, "worst_case_ci_half_width": 0.044,
                               "sft_answers": {"wall_seconds": 9.01, "peak_rss_mib": 548.3, "other_cpu_share": 0.004},
                               "evaluate": {"wall_seconds": 11.37, "peak_rss_mib": 606.1, "other_cpu_share": 0.02}}}
    text = "a\n<!-- bench.report evaluate_cost -->\nold figures\n<!-- /bench.report -->\nb\n"
    new = report.render(text, bench)
    assert "old figures" not in new and "| `evaluate` | 11.4 s | 606 MiB |" in new and new.endswith("b\n")
    assert "at most 2.0% of the cores" in new  # the busiest measurement of the section
    assert "`python -m bench.qlora` writes it" in report.render(text.replace("evaluate_cost", "qlora"), bench)
