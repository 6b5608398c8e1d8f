"""Resuming a training run that died.

Checkpoints live outside the stage's DVC outputs (DVC deletes those before a stage runs) and exist only to resume a
run that was killed. The Trainer's own get_last_checkpoint takes the highest-numbered folder even if the crash came
while it was being written, so a marker is written into each folder last, and only marked folders are resumed from.
"""
import hashlib
import json
import shutil
from pathlib import Path

from rlhf.io import plain, provenance, read_json, write_json
from rlhf.launch import is_main_process

COMPLETE = "complete.json"  # written last into a checkpoint folder
RUN_FILE = "run.json"  # what the checkpoints in a folder were trained with: a resume never mixes two configurations


def fingerprint(inputs: list, **sections) -> str:
    """sha256 of what a training run depends on: its params sections, the content of its input folders, the rlhf
    package's code, the user's reward functions (rewards/) and the library versions. Checkpoints written under another
    fingerprint are never resumed from."""
    import rlhf

    digest = hashlib.sha256(json.dumps({"params": sections, "versions": provenance()["versions"]}, sort_keys=True,
                                       default=plain).encode())
    project = Path(rlhf.__file__).parent.parent
    code = sorted(Path(rlhf.__file__).parent.rglob("*.py")) + sorted((project / "rewards").rglob("*.py"))
    files = [f for folder in inputs if folder is not None for f in sorted(Path(folder).rglob("*")) if f.is_file()]
    for f in code + files:
        digest.update(f.name.encode())
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def complete_checkpoints(folder: str | Path, prefix: str = "checkpoint-") -> list[Path]:
    """The checkpoint folders under `folder` that hold the completion marker, oldest step first."""
    marked = [p.parent for p in Path(folder).glob(f"{prefix}*/{COMPLETE}")]
    return sorted(marked, key=lambda p: int(p.name[len(prefix):]))


def finished(checkpoint: Path) -> bool:
    """Whether a Trainer checkpoint is the last step of its run. Resumed from there, transformers 5.23 takes one step
    too many (a run of 2 steps ends at step 3), so the checkpoint before it is resumed from instead."""
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return False
    state = read_json(state)
    return state["global_step"] >= state["max_steps"]


def resume_point(checkpoints: str | Path, inputs: list, prefix: str = "checkpoint-", **sections) -> str | None:
    """Prepare the checkpoint folder for a run of these params and inputs; return the newest complete checkpoint to
    resume from, or None to start over. Checkpoints of another configuration and half-written ones are deleted
    (by the main process; the others only read)."""
    checkpoints = Path(checkpoints)
    key = fingerprint(inputs, **sections)
    run_file = checkpoints / RUN_FILE
    same_run = run_file.is_file() and read_json(run_file).get("fingerprint") == key
    if is_main_process() and not same_run:
        if checkpoints.exists():
            print(f"checkpoints: discarding {checkpoints} (written with other params, inputs or code)")
        shutil.rmtree(checkpoints, ignore_errors=True)
        checkpoints.mkdir(parents=True)
        write_json(run_file, {"fingerprint": key})
    return newest_complete(checkpoints, prefix) if same_run else None


def newest_complete(checkpoints: str | Path, prefix: str = "checkpoint-") -> str | None:
    """The newest complete checkpoint under `checkpoints` (a folder `resume_point` has checked) that is not the last
    step of its run, or None; the others are deleted (by the main process)."""
    found = [c for c in complete_checkpoints(checkpoints, prefix) if not finished(c)]
    if is_main_process():
        for folder in Path(checkpoints).glob(f"{prefix}*"):
            if folder.is_dir() and folder not in found:
                shutil.rmtree(folder)  # half-written by a run that died while saving, or a run's last step
    if found:
        print(f"checkpoints: resuming from {found[-1]}")
        return str(found[-1])
    return None


def align_sections(params, method: str) -> dict:
    """The params a run of an align method's checkpoints depend on (those the align stage declares in dvc.yaml)."""
    return {"seed": params.seed, "method": method, "source": params.data.source, "model": params.model,
            "lora": params.lora, "compute": params.compute, "align": params.align, method: getattr(params, method)}


def prune_checkpoints(checkpoints: str | Path, prefix: str, keep: int = 2) -> None:
    """Delete all but the newest `keep` complete checkpoints (what save_total_limit does for the Trainer)."""
    for folder in complete_checkpoints(checkpoints, prefix)[:-keep]:
        shutil.rmtree(folder)


def discard_checkpoints(checkpoints: str | Path) -> None:
    """Delete a finished run's checkpoints: its outputs are in the DVC cache now, and a forced rerun must train anew."""
    if is_main_process():
        shutil.rmtree(checkpoints, ignore_errors=True)


def mark_complete(folder: str | Path, step: int) -> None:
    write_json(Path(folder) / COMPLETE, {"step": step})


def checkpoint_callback(replay_to: list):
    """A TrainerCallback that marks each checkpoint complete once the Trainer has written all of it (weights,
    optimizer, scheduler, RNG states, trainer state), and, on a resumed run, replays the resumed state's log history
    into `replay_to` (DVCLive callbacks), so the curves show the whole run and not just its second half."""
    from accelerate import PartialState
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.global_step > 0:
                for callback in replay_to:
                    for entry in state.log_history:
                        callback.on_log(args, state, control, logs=dict(entry))

        def on_save(self, args, state, control, **kwargs):
            PartialState().wait_for_everyone()  # every process has written its part (e.g. its RNG state)
            if state.is_world_process_zero:
                mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)

    return CheckpointMarker()


def train_resumable(trainer, resume: str | None) -> float:
    """trainer.train(), from `resume` if given, with each checkpoint marked complete; returns the wall seconds."""
    import time

    from transformers.integrations import DVCLiveCallback

    live = [c for c in trainer.callback_handler.callbacks if isinstance(c, DVCLiveCallback)]
    trainer.add_callback(checkpoint_callback(live))
    start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    return time.time() - start


