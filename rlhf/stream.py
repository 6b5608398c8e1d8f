"""Streaming for the data stages (fetch, prepare, tokenize): rows go through in batches, each batch is worked on in a
worker process, and results come back in input order with only a few batches in flight. Memory depends on
`processing.batch_size` and `processing.num_proc`, not on the size of the data; the output does not depend on either.

Nothing here imports torch: fetch and prepare start in well under a second.
"""
import ctypes
import gzip
import itertools
import multiprocessing
import os
import signal
import sys
from array import array
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def workers(num_proc: int | str) -> int:
    """The number of worker processes `processing.num_proc` stands for (auto: the CPU cores this process may use)."""
    return len(os.sched_getaffinity(0)) if num_proc == "auto" else num_proc


def batched(items, size: int):
    """Lists of `size` consecutive items (the last one shorter)."""
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


_shared: dict = {}  # in a worker: the keyword arguments parallel_map hands every call, set once when it starts


def _call(fn, batch):
    return fn(batch, **_shared)


def _start_worker(parent: int, shared: dict) -> None:
    """A worker dies with the stage process: killed by SIGKILL (as the OOM killer does), the stage runs no cleanup,
    and orphaned workers would stay blocked on their pipe, holding their memory. Ctrl-C is left to the stage process,
    which stops the workers itself (in a worker it would only print a traceback per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the stage died before the line above took effect
        os._exit(1)
    _shared.update(shared)


def parallel_map(fn, batches, num_proc: int, **shared):
    """fn(batch, **shared) for every batch, in order. With more than one process, batches go to forked workers and at
    most two per worker are in flight, so a slow consumer never makes the input pile up in memory. `fn` must be a
    module-level function; an exception in a worker is raised here. `shared` (a tokenizer, say) reaches each worker
    once, when it is forked: as an argument of each call it would be pickled with every batch (measured: the workers'
    memory then grew by the size of a tokenizer per batch, 2.5 GB at 1M pairs)."""
    if num_proc <= 1:
        yield from (fn(batch, **shared) for batch in batches)
        return
    pool = ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker,
                               initargs=(os.getpid(), shared))
    try:
        pending = deque()
        for batch in batches:
            pending.append(pool.submit(_call, fn, batch))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BaseException:  # an error, Ctrl-C, or the consumer stopped early: do not wait for the batches in flight
        for process in list(pool._processes.values()):  # no public way before Python 3.14's terminate_workers()
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def lines(path: str | Path):
    """(1-based line number, line without its newline) for every line of a UTF-8 text file (gzipped if its name ends
    in .gz) that is not blank, read a buffer at a time. Lines end at '\\n', '\\r\\n' or '\\r' only (str.splitlines
    would also split inside a JSON string holding U+2028)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


class LineIndex:
    """Random access to the lines of a file by their byte offsets, for writing rows in another order than they were
    read (a shuffled train split, a sorted validation split) without holding them in memory."""

    def __init__(self, path: str | Path):
        self.path, self.offsets = Path(path), array("q")

    def scan(self):
        """Every line as bytes (newline kept), recording where each starts; blank lines are skipped, as in `lines`."""
        with open(self.path, "rb") as f:
            offset = 0
            for line in f:
                if line.strip():
                    self.offsets.append(offset)
                    yield line
                offset += len(line)

    def read(self, order):
        """The lines numbered `order` (0-based, among the scanned lines), in that order."""
        with open(self.path, "rb") as f:
            for i in order:
                f.seek(self.offsets[i])
                yield f.readline()

    def write(self, order, out: str | Path) -> None:
        """Write the lines numbered `order` to `out`, in that order."""
        with open(out, "wb") as dst:
            for line in self.read(order):
                dst.write(line if line.endswith(b"\n") else line + b"\n")
