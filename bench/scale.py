"""Benchmark: the data stages (fetch, prepare, tokenize) at real sizes, and every stage's start-up (import) time.

    python -m bench.scale [--sizes 10000 100000 1000000] [--code DIR] [--out metrics/bench.json]

The data: ../shared/data's HH-RLHF file repeated to each size, every copy tagged in its first human turn ("[copy 7]")
so that no copy is a duplicate of another. One tokenizer (the base stage's, built once on the 10k set with one
pretraining step) serves every size, so the tokens per pair are the same at every size. Each stage runs as
`python -m stages.<name>` in its own folder with the repository's params.yaml, `data.on_bad_rows: skip` (the file has
5 malformed pairs) and the source set to the file.

Figures per size and stage: wall seconds, pairs per second (pairs going into the stage), the peak resident memory of
the largest process (RSS) and the peak of all its processes together (workers included; PSS, so that pages a forked
worker shares with its parent count once), sampled every 50 ms, and the
share of the cores other processes used meanwhile. Then the start-up time of every stage module, and whether it
imports torch, transformers or trl. `--code DIR` runs another checkout's stages (e.g. an older commit, for a
before/after figure) on the same data and tokenizer. Writes one section (`--key`, default `data_scale`) of the JSON
file and keeps the others.
"""
import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench import machine, pipeline
from rlhf import config
from rlhf.io import write_json

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
SETTINGS = {"data.on_bad_rows": "skip", "model.pretrain.max_steps": 1}
HEAVY = ("torch", "transformers", "trl")


def make_data(pairs: int, path: Path) -> Path:
    """`pairs` lines of the HH file, repeated, each copy's rows tagged in their first human turn."""
    lines = gzip.open(HH, "rt", encoding="utf-8").read().splitlines()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(pairs):
            copy, row = divmod(i, len(lines))
            row = json.loads(lines[row])
            for key in ("chosen", "rejected"):
                row[key] = row[key].replace("\n\nHuman: ", f"\n\nHuman: [copy {copy}] ", 1)
            f.write(json.dumps(row) + "\n")
    return path


def tree_memory(pid: int, peak: dict, stop: threading.Event) -> None:
    """Sample the memory of process `pid` and its descendants every 50 ms; keep the peak of their sum. PSS, not RSS:
    forked workers share their parent's pages, which RSS would count once per process."""
    while not stop.wait(0.05):
        try:
            procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
            total = sum(p.memory_full_info().pss for p in procs if p.is_running())
        except psutil.Error:
            continue
        peak["tree"] = max(peak["tree"], total)


def run_stage(code: Path, workdir: Path, log: Path, *argv: str) -> dict:
    """One stage command, timed; its largest process's peak RSS (pipeline.timed) and its tree's sampled peak."""
    peak, stop = {"tree": 0}, threading.Event()
    env = pipeline.environment(code)
    watch = machine.Watch()
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", pipeline.PEAK_RSS, str(log.with_suffix(".rss")), sys.executable,
                                 "-m", *argv], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = threading.Thread(target=tree_memory, args=(proc.pid, peak, stop))
        sampler.start()
        code_ = proc.wait()
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
    if code_:
        raise RuntimeError(f"{argv} failed; end of its output:\n{log.read_text()[-3000:]}")
    return {"wall_seconds": round(wall, 2), "peak_rss_mib": round(int(log.with_suffix(".rss").read_text()) / 1024, 1),
            "peak_tree_pss_mib": round(peak["tree"] / 2**20, 1), **watch.report()}


def data_stages(code: Path, workdir: Path, source: Path, base: Path | None) -> dict:
    """fetch, prepare and tokenize (and base, if `base` is None: to build the shared tokenizer) in `workdir`."""
    workdir.mkdir(parents=True)
    config.write_with_overrides(code / "params.yaml", workdir / "params.yaml", {**SETTINGS, "data.source": str(source)})
    logs = workdir / "logs"
    logs.mkdir()
    # the stages' paths.yaml layout inside workdir (code from before paths.yaml took --out and the like instead)
    result = {"fetch": run_stage(code, workdir, logs / "fetch.log", "stages.fetch")}
    result["prepare"] = run_stage(code, workdir, logs / "prepare.log", "stages.prepare")
    if base is None:
        run_stage(code, workdir, logs / "base.log", "stages.base")
        base = workdir / "models/base"
    result["tokenize"] = run_stage(code, workdir, logs / "tokenize.log", "stages.tokenize", "--base", str(base))
    data = json.loads((workdir / "metrics/data.json").read_text())
    tokens = json.loads((workdir / "metrics/tokenize.json").read_text())
    pairs_in = {"fetch": data["rows_read"], "prepare": data["rows_fetched"],
                "tokenize": tokens["train"]["rows_in"] + tokens["validation"]["rows_in"]}
    for name, pairs in pairs_in.items():
        result[name]["pairs"] = pairs
        result[name]["pairs_per_second"] = round(pairs / result[name]["wall_seconds"], 1)
    total = sum(result[name]["wall_seconds"] for name in pairs_in)
    result["data_stages"] = {"wall_seconds": round(total, 2), "pairs_per_second": round(data["rows_read"] / total, 1),
                             "peak_rss_mib": max(result[n]["peak_rss_mib"] for n in pairs_in),
                             "peak_tree_pss_mib": max(result[n]["peak_tree_pss_mib"] for n in pairs_in)}
    return result


def stage_imports(code: Path, repeats: int = 3) -> dict:
    """Seconds to start each stage's module (`python -c "import stages.<name>"`, best of `repeats`), and whether it
    imports torch, transformers or trl."""
    out = {}
    for script in sorted((code / "stages").glob("*.py")):
        name = script.stem
        probe = (f"import json, sys, time; t = time.perf_counter(); import stages.{name}; "
                 f"print(json.dumps([time.perf_counter() - t, [m for m in {HEAVY!r} if m in sys.modules]]))")
        runs = [json.loads(subprocess.run([sys.executable, "-c", probe], cwd=code, env=pipeline.environment(code),
                                          capture_output=True, text=True, check=True).stdout)
                for _ in range(repeats)]
        out[name] = {"import_seconds": round(min(seconds for seconds, _ in runs), 3), "imports": runs[0][1]}
    return out


def main():
    parser = argparse.ArgumentParser(description="The data stages at 10k, 100k and 1M pairs; stage start-up times.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose stages to run (default: this one)")
    parser.add_argument("--key", default="data_scale", help="section of the JSON file to write")
    parser.add_argument("--out", type=Path, default=REPO / "metrics/bench.json")
    args = parser.parse_args()
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    # which checkout ran, without its machine path: the commit says what the code was
    section = {"code": "this checkout" if args.code.resolve() == REPO.resolve() else "another checkout (--code)", "git": subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.code,
                                                            capture_output=True, text=True).stdout.strip(),
               "device": machine.device(), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="rlhf-scale-") as tmp:
        tmp = Path(tmp)
        smallest = make_data(min(args.sizes), tmp / f"pairs-{min(args.sizes)}.jsonl")
        data_stages(REPO, tmp / "base", smallest, None)  # the tokenizer every size shares
        for size in sorted(args.sizes):
            source = smallest if size == min(args.sizes) else make_data(size, tmp / f"pairs-{size}.jsonl")
            section["sizes"][str(size)] = data_stages(args.code, tmp / f"run-{size}", source,
                                                      tmp / "base/models/base")
            print(json.dumps({size: section["sizes"][str(size)]["data_stages"]}), flush=True)
            if source != smallest:
                source.unlink()
    section["stage_imports"] = stage_imports(args.code)
    report[args.key] = {**section, **machine.stamp(git=False)}
    write_json(args.out, report)
    print(json.dumps(section, indent=2))


if __name__ == "__main__":
    main()
