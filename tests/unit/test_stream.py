"""stream: batches come back in order, at most two per worker are read ahead, and shared arguments reach the workers
without being pickled with every batch."""
import pytest

from rlhf import stream


class Unpicklable:
    """Stands for a tokenizer: pickling it with every batch made the workers' memory grow batch after batch."""

    def __reduce__(self):
        raise AssertionError("a shared argument was pickled")


def scale(batch, factor, marker):
    assert isinstance(marker, Unpicklable)
    return [x * factor for x in batch]


@pytest.mark.parametrize("num_proc", [1, 2])
def test_results_in_order_and_shared_arguments_not_pickled(num_proc):
    batches = list(stream.batched(range(100), 7))
    out = list(stream.parallel_map(scale, batches, num_proc, factor=3, marker=Unpicklable()))
    assert out == [[x * 3 for x in b] for b in batches]


def test_reads_at_most_two_batches_per_worker_ahead():
    read = []

    def batches():
        for i in range(50):
            read.append(i)
            yield [i]

    results = stream.parallel_map(scale, batches(), 2, factor=1, marker=Unpicklable())
    assert next(results) == [0]
    assert len(read) <= 2 * 2 + 1  # the one consumed, and at most four in flight


def test_line_index_writes_lines_in_any_order(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"a\n\nbb\r\nccc")  # a blank line, a CRLF, no final newline
    index = stream.LineIndex(path)
    assert list(index.scan()) == [b"a\n", b"bb\r\n", b"ccc"]
    index.write([2, 0, 1], tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"ccc\na\nbb\r\n"
