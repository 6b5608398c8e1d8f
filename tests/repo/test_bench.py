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
