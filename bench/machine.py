"""The machine: what it is, and whether anything else was using its cores while a figure was measured.

On 2 cores, a second torch process running at the same time can slow a training run by 20x (its threads and ours
wait on each other), so every measurement waits for the machine to be quiet first and reports the share of the cores
that other processes used while it ran."""
import datetime
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import torch

QUIET_SHARE = 0.1  # other processes below this share of the cores count as quiet
MAX_WAIT_SECONDS = 120  # per measurement; then measure anyway: `other_cpu_share` tells how much the figure is worth
WAIT_BUDGET_SECONDS = 900  # for the whole run, so a machine that is never quiet does not double its length
waited_total = 0.0


def device() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    meminfo = Path("/proc/meminfo").read_text().split()
    return {"cpu": model or platform.processor(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gib": round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def stamp(git: bool = True) -> dict:
    """Where and when a section was measured: the date, the machine and, with `git`, this checkout's commit (leave it
    out where the section records the commit it measured, which may be another: bench.sweep's `rev`, bench.scale's
    `git` of `--code`)."""
    found = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": device()}
    if git:
        repo = Path(__file__).resolve().parents[1]
        found["git"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                      text=True).stdout.strip() or None
    return found


def busy_seconds() -> float:
    """CPU seconds all cores together have been busy since boot (/proc/stat: everything but idle and iowait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(window: float = 3.0) -> float:
    """Wait until other processes use less than QUIET_SHARE of the cores over `window` seconds (this process is idle
    meanwhile), or the wait limits are reached; returns the seconds waited."""
    global waited_total
    start = time.perf_counter()
    limit = min(MAX_WAIT_SECONDS, WAIT_BUDGET_SECONDS - waited_total)
    while time.perf_counter() - start < limit:
        before = busy_seconds()
        time.sleep(window)
        if (busy_seconds() - before) / (window * os.cpu_count()) < QUIET_SHARE:
            break
    waited = time.perf_counter() - start
    waited_total += waited
    return round(waited, 1)


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of every child of it that has been waited for (with their descendants)."""
    usages = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(u.ru_utime + u.ru_stime for u in usages)


class Watch:
    """Around one measurement, run in a child that has been waited for by report(): the share of the cores that
    other processes used = (all busy CPU time - this process tree's CPU time) / (wall time x cores)."""

    def __init__(self):
        self.waited = wait_for_quiet()
        self.busy, self.own, self.start = busy_seconds(), own_cpu_seconds(), time.perf_counter()

    def report(self) -> dict:
        wall = time.perf_counter() - self.start
        other = (busy_seconds() - self.busy) - (own_cpu_seconds() - self.own)
        return {"other_cpu_share": round(max(0.0, other) / (wall * os.cpu_count()), 3),
                "waited_for_quiet_seconds": self.waited, "cpu_seconds": round(own_cpu_seconds() - self.own, 1)}
