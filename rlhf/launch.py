"""Training on several processes through Hugging Face accelerate: a stage re-runs itself under `accelerate launch`
when params.yaml asks for it, and only the main process writes outputs, metrics and curves."""
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from rlhf.io import UserError, atomic_dir, clear_stale, temp_prefix

LAUNCHED = "RLHF_LAUNCHED"  # set in the processes `relaunch` starts, so they do the work instead of launching again


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in the one process that writes outputs (rank 0), or when not launched as several processes."""
    return int(os.environ.get("RANK", "0")) == 0


def free_port() -> int:
    """A free TCP port for the processes' rendezvous (two launches on one machine must not collide)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def relaunch(compute, module: str) -> bool:
    """Run the stage `module` with this process's arguments under `accelerate launch` when compute.num_processes > 1
    or compute.accelerate_config is set, and wait for it; returns True if it did (the caller has nothing left to do).
    Processes started by a launcher (ours, or `accelerate launch` / `torchrun` run by hand) do the work."""
    if LAUNCHED in os.environ or "WORLD_SIZE" in os.environ:
        return False
    if compute.num_processes == 1 and compute.accelerate_config is None:
        return False
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if compute.accelerate_config:
        cmd += ["--config_file", compute.accelerate_config]
    else:  # plain DDP: one process per GPU, or gloo processes on a CPU-only machine
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]
    if compute.num_processes > 1:
        cmd += ["--num_processes", str(compute.num_processes)]
    cmd += ["-m", module, *sys.argv[1:]]
    root = str(Path(importlib.util.find_spec(module).origin).parents[1])  # so `-m stages.x` imports from any folder
    env = {**os.environ, LAUNCHED: "1", "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    print(f"launching {compute.num_processes} processes: {' '.join(cmd)}", flush=True)
    if subprocess.run(cmd, env=env).returncode != 0:
        raise UserError(f"{module} failed in one of its processes (its error is printed above).")
    return True


@contextlib.contextmanager
def stage_output(path: str | Path):
    """rlhf.io.atomic_dir for a training stage that may run as several processes. Then every process gets the same
    temporary folder (engines such as DeepSpeed ZeRO-3 write from every process), and the main process alone moves
    it into place, once all have finished."""
    if world_size() == 1:
        with atomic_dir(path) as tmp:
            yield tmp
        return
    from accelerate import PartialState

    path = Path(path)
    # Named after the launcher (every process's parent), which is alive as long as any of them: the same folder for
    # all processes, and one that no other stage's sweep takes for a dead run's leftovers.
    tmp = path.parent / (temp_prefix(path, os.getppid()) + "launch")
    if is_main_process():
        clear_stale(path.parent)
        tmp.mkdir(parents=True)
    yield tmp
    PartialState().wait_for_everyone()
    if is_main_process():
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
