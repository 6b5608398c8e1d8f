"""Killed and interrupted stages: no worker process outlives its stage, no temp folder outlives the next run, and
Ctrl-C prints one line, not a traceback. Real process trees: the stage process is killed, not the pool."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import REPO

from rlhf.io import atomic_dir

# A stage-like process: a pool of 2 workers that block, inside an atomic output folder.
STAGE = textwrap.dedent("""
    import sys, time
    from rlhf import stream
    from rlhf.io import atomic_dir, run

    def block(batch):
        time.sleep(600)
        return batch

    def main():
        with atomic_dir(sys.argv[1]):
            print("started", flush=True)
            for _ in stream.parallel_map(block, [[1]], 2):  # one worker busy, one idle
                pass

    if __name__ == "__main__":
        run(main)
""")


def start_stage(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    """The stage process and the pids of its workers, once both workers are up."""
    script = tmp_path / "stage.py"
    script.write_text(STAGE)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SIGINT as a terminal gives it: a background job of a non-interactive shell (nohup ... &) starts with SIGINT
    # ignored, which its children inherit, and Python then installs no KeyboardInterrupt handler at all
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "started"
    for _ in range(100):
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if len(children) >= 2:
            return proc, [int(c) for c in children]
        time.sleep(0.1)
    raise AssertionError("the workers did not start")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def test_sigkill_of_the_stage_kills_its_workers_and_the_next_run_clears_its_temp_folder(tmp_path):
    proc, workers = start_stage(tmp_path)
    proc.kill()  # as the OOM killer does: no cleanup runs in the stage process
    proc.wait()
    time.sleep(5)
    survivors = [pid for pid in workers if alive(pid)]
    for pid in survivors:  # leave nothing behind even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived their killed stage"
    assert list(tmp_path.glob(".out.tmp-*")), "the killed stage should have left its temp folder"
    with atomic_dir(tmp_path / "other"):  # any later output written in the same folder sweeps dead runs' temps
        pass
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_a_live_runs_temp_folder_is_kept(tmp_path):
    live = tmp_path / f".out.tmp-{os.getpid()}-abc"  # this test process is alive: its folder is in use
    live.mkdir()
    with atomic_dir(tmp_path / "out"):
        pass
    assert live.exists()


def test_ctrl_c_prints_one_line_and_stops_the_workers(tmp_path):
    proc, workers = start_stage(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group, workers included
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in err and err.strip() == "interrupted (Ctrl-C): no output was written.", err
    time.sleep(1)
    assert not [pid for pid in workers if alive(pid)]
    assert not list(tmp_path.glob(".out.tmp-*")) and not (tmp_path / "out").exists()


def test_clear_stale_outputs_sweeps_beside_every_output_even_when_no_stage_ran(tmp_path):
    """A run DVC restores wholly from its run cache runs no stage, so no stage sweeps; `python -m rlhf.paths` (which
    `make repro` and `make exp` call after DVC) deletes dead runs' temp folders beside every output."""
    from rlhf import paths

    layout = paths.layout().under(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [layout.policy.parent / f".policy.tmp-{dead.pid}-x", layout.sft_live.parent / f".sft.tmp-{dead.pid}-y"]
    live = layout.policy.parent / f".policy.tmp-{os.getpid()}-z"
    for folder in stale + [live]:
        folder.mkdir(parents=True)
    paths.clear_stale_outputs(layout)
    assert not [f for f in stale if f.exists()] and live.exists()
