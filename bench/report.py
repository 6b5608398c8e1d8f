"""The benchmark's figures in the docs, generated from metrics/bench.json, so that none is typed by hand.

    python -m bench.report --write   # rewrite every generated block in bench/README.md and README.md
    python -m bench.report --check   # exit 1 and name the blocks that differ from what the JSON gives

A block is the lines between `<!-- bench.report NAME -->` and `<!-- /bench.report -->` in one of FILES; NAME is one of
BLOCKS, a function from the whole JSON to markdown lines. A section the JSON lacks gives a line saying which command
writes it. Each block says where and when its figures were measured, and how busy the machine was (`other_cpu_share`:
the share of the cores other processes used; above about 0.1 a time is not worth much). tests/repo/test_docs.py runs
the check, and fails on a measured figure written outside a block.
"""
import argparse
import re
import sys
from pathlib import Path

from rlhf.io import read_json

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "metrics/bench.json"
FILES = (REPO / "bench/README.md", REPO / "README.md")
BLOCK = re.compile(r"(<!-- bench\.report (?P<name>\w+) -->\n)(?P<body>.*?)(<!-- /bench\.report -->)", re.S)
BLOCKS = {}


def block(key: str, command: str):
    """Register a block: a function of its main section of the JSON (`key`) and of the whole JSON. A JSON without
    that section gives, in place of the block, the line saying that `command` writes it."""
    def register(function):
        def made(bench: dict) -> list[str]:
            return function(bench[key], bench) if bench.get(key) else missing(key, command)
        BLOCKS[function.__name__] = made
        return function
    return register


# -- formatting

def secs(x: float) -> str:
    return f"{x:.0f} s" if x >= 100 else f"{x:.1f} s" if x >= 1 else f"{x:.2f} s"


def mib(x: float) -> str:
    return f"{x:.0f} MiB"


def pct(share: float, digits: int = 0) -> str:
    return f"{100 * share:.{digits}f}%"


def times(ratio: float) -> str:
    return f"{ratio:.2f}x"


def change(before: float, after: float) -> str:
    """`after` against `before` as a signed percentage: '-12%'."""
    return f"{100 * (after / before - 1):+.0f}%"


def shares(section) -> list[float]:
    """Every `other_cpu_share` in a section, at any depth."""
    if isinstance(section, dict):
        return ([section["other_cpu_share"]] if "other_cpu_share" in section else []) + [
            s for key, value in section.items() if key != "other_cpu_share" for s in shares(value)]
    if isinstance(section, list):
        return [s for value in section for s in shares(value)]
    return []


def where(section: dict, *extra: dict, run: dict | None = None) -> str:
    """'Measured <date> at <commit> on <machine>; other processes used at most <share> of the cores.' From the
    section's own record, or from `run` (bench.run's top level, for the sections it writes); `extra`: more sections
    whose `other_cpu_share` count."""
    own = {**(run or {}), **{k: v for k, v in section.items() if k in ("date", "git", "rev", "device")}}
    device, date = own.get("device"), (own.get("date") or "")[:10]
    commit = own.get("git") or own.get("rev")
    commit = commit.get("commit") if isinstance(commit, dict) else commit
    machine = (f"{device.get('cpu_cores')} cores of an {device.get('cpu')} with {device.get('memory_gib')} GiB, "
               f"{device.get('gpu') or 'no GPU'}") if device else "a machine the section does not record"
    busy = shares([section, *extra])
    quiet = f"; other processes used at most {pct(max(busy), 1)} of the cores" if busy else ""
    return (f"Measured {date or '(no date recorded)'}"
            f"{f' at `{commit[:7]}`' if commit else ''} on {machine}{quiet}.")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + ["| " + " | ".join(r) + " |"
                                                                             for r in rows]


def missing(key: str, command: str) -> list[str]:
    return [f"Not in `metrics/bench.json` yet (section `{key}`): `{command}` writes it."]


# -- the blocks

@block("quickstart", "python -m bench.quickstart")
def quickstart(q: dict, bench: dict) -> list[str]:
    """README's quick start: the two commands' wall and CPU time, quiet and, where measured, beside busy processes."""
    loaded = bench.get("quickstart_loaded")
    printed = {"repro": "a `Running stage '<name>':` block per stage, then `evaluate: eval.gate passed` and "
                        "`export: models/export (dpo, float32, gate passed)`",
               "test": "pytest's summary, `" + q["test"].get("summary", "... passed") + "`"}

    def cell(m: dict) -> str:
        return f"{secs(m['wall_seconds'])} wall, {secs(m['cpu_seconds'])} of CPU"

    header = ["command", "what it prints at the end", "quiet machine"]
    if loaded:
        header.append(f"beside {loaded['load_processes']} busy process{'es' if loaded['load_processes'] > 1 else ''}")
    rows = [[f"`make {n}`", printed[n], cell(q[n])] + ([cell(loaded[n])] if loaded else []) for n in ("repro", "test")]
    lines = table(header, rows) + ["", "Times on 2 CPU cores with `.venv/` already made. Quiet: m" + where(q)[1:]]
    if loaded:
        lines.append("Busy: m" + where(loaded)[1:])
    return lines + ["On a busier machine the wall time is at least the CPU time divided by the cores left free, and "
                    "more where processes contend for the same cores. `python -m bench.quickstart [--load N]` measures "
                    "both commands in a fresh clone."]


@block("pipeline", "python -m bench.run")
def pipeline(pipe: dict, bench: dict) -> list[str]:
    """bench.run: the pipeline's stages, ours against plain TRL, padding."""
    stages = pipe["stages"]
    by_time = sorted(stages.items(), key=lambda kv: -kv[1]["wall_seconds"])
    largest = max(stages.items(), key=lambda kv: kv[1]["peak_rss_mib"])
    training = [n for n in stages if "real_tokens_per_second" in stages[n]]
    noop, orpo = pipe["noop_repro"], pipe["exp_run_method_orpo"]
    tiny, qwen, pad = bench["ours_vs_trl"], bench["qwen2_0_5b_shaped"], bench["padding"]
    q32 = qwen["float32"]
    rows = [
        ["full pipeline (sum of the stages)", f"{secs(pipe['full_pipeline_wall_seconds'])}: " + ", ".join(
            f"{n} {s['wall_seconds']:.0f}" for n, s in by_time)],
        ["peak memory of a stage", f"{mib(largest[1]['peak_rss_mib'])} at most ({largest[0]})"],
        ["training tokens per second", ", ".join(f"{n} {stages[n]['real_tokens_per_second'] / 1000:.1f}k"
                                                 for n in training)],
        ["`dvc repro` with nothing to do", f"{secs(noop['wall_seconds'])}, stages run: "
                                           f"{', '.join(noop['stages_run']) or 'none'}"],
        ["`dvc exp run -S method=orpo`", f"{secs(orpo['wall_seconds'])}, {pct(orpo['share_of_full_pipeline'])} of the "
                                         f"full pipeline; stages run: {', '.join(orpo['stages_run'])}"],
        [f"ours / plain TRL, steps per second, tiny model (median of {tiny['repeats']})",
         f"SFT {times(tiny['sft']['ours_over_trl_ratio'])}, DPO {times(tiny['dpo']['ours_over_trl_ratio'])}"],
        [f"ours / plain TRL, {qwen['shape']} shape, fp32, {q32['steps']['sft']} steps of batch "
         f"{qwen['per_device_train_batch_size']} ({q32['repeats']} run)",
         f"SFT {times(q32['sft']['ours_over_trl_ratio'])}, DPO {times(q32['dpo']['ours_over_trl_ratio'])}"],
        [f"peak memory, {qwen['shape']} shape (ours / TRL)",
         f"SFT {q32['sft']['ours_peak_rss_mib']:.0f} / {mib(q32['sft']['trl_peak_rss_mib'])}, "
         f"DPO {q32['dpo']['ours_peak_rss_mib']:.0f} / {mib(q32['dpo']['trl_peak_rss_mib'])}"],
        ["padding share in training batches, random order / grouped by length",
         f"SFT {pct(pad['sft']['random_pad_share'], 1)} / {pct(pad['sft']['group_by_length_pad_share'], 1)}, "
         f"DPO {pct(pad['dpo']['random_pad_share'], 1)} / {pct(pad['dpo']['group_by_length_pad_share'], 1)}"],
        ["plain TRL SFT with `train_sampling_strategy: group_by_length`",
         f"{pct(pad['sft_trl_training_time']['saving_share'])} less time "
         f"({secs(pad['sft_trl_training_time']['random_train_seconds'])} to "
         f"{secs(pad['sft_trl_training_time']['group_by_length_train_seconds'])})"],
        [f"TRL {pad['dpo_padding_free']['trl_version']} DPO `padding_free=True`",
         "a no-op: the trainer turns it off and pads" if pad["dpo_padding_free"]["no_op"] else "takes effect"],
    ]
    return [where(pipe, tiny, qwen, pad, run=bench), ""] + table(["figure", "value"], rows)


@block("data_scale", "python -m bench.scale")
def data_scale(scale: dict, bench: dict) -> list[str]:
    """bench.scale: fetch, prepare and tokenize at 10k, 100k and 1M pairs, streaming against before."""
    runs = [("streaming", scale), ("before", bench.get("data_scale_before"))]
    rows = []
    for size in sorted(scale["sizes"], key=int):
        for code, section in reversed(runs):
            if not section:
                continue
            s = section["sizes"].get(size)
            label = f"{int(size) // 1000}k" if int(size) < 10**6 else f"{int(size) // 10**6}M"
            if s is None:
                rows.append([label, code, "not run"] + [""] * 6)
                continue
            all3 = s["data_stages"]
            rows.append([label, code, *(secs(s[n]["wall_seconds"]) for n in ("fetch", "prepare", "tokenize")),
                         secs(all3["wall_seconds"]), f"{all3['pairs_per_second']:.0f}",
                         f"{1e6 / all3['pairs_per_second']:.0f}",
                         f"{mib(all3['peak_rss_mib'])} / {mib(all3['peak_tree_pss_mib'])}"])
    lines = [where(scale, bench.get("data_scale_before") or {}), ""] + table(
        ["pairs", "code", "fetch", "prepare", "tokenize", "all three", "pairs/s", "µs per pair",
         "peak memory: largest process / all processes"], rows)
    now, before = scale["sizes"], (bench.get("data_scale_before") or {}).get("sizes", {})
    common = [s for s in sorted(now, key=int) if s in before]
    if common:
        lines.append("")
        for s in common:
            lines.append(f"- at {int(s):,} pairs, streaming against before: the three stages "
                         f"{times(now[s]['data_stages']['pairs_per_second'] / before[s]['data_stages']['pairs_per_second'])}"
                         f" the pairs per second (tokenize alone "
                         f"{times(now[s]['tokenize']['pairs_per_second'] / before[s]['tokenize']['pairs_per_second'])}"
                         f"), the largest process {change(before[s]['data_stages']['peak_rss_mib'], now[s]['data_stages']['peak_rss_mib'])} memory")
    sizes = sorted(now, key=int)
    if len(sizes) > 1:
        small, large = now[sizes[-2]]["data_stages"], now[sizes[-1]]["data_stages"]
        lines.append(f"- from {int(sizes[-2]):,} to {int(sizes[-1]):,} pairs ({int(sizes[-1]) // int(sizes[-2])}x "
                     f"the data): the largest process's peak {change(small['peak_rss_mib'], large['peak_rss_mib'])}, "
                     f"all processes' {change(small['peak_tree_pss_mib'], large['peak_tree_pss_mib'])}, the cost per "
                     f"pair {1e6 / small['pairs_per_second']:.0f} against {1e6 / large['pairs_per_second']:.0f} µs")
    imports = scale.get("stage_imports")
    if imports:
        light = [n for n, i in imports.items() if not i["imports"]]
        heavy = [i["import_seconds"] for i in imports.values() if i["imports"]]
        lines.append(f"- stage start-up (`stage_imports`, best of 3): {', '.join(light)} import in "
                     f"{secs(max(imports[n]['import_seconds'] for n in light))} at most and pull in none of torch, "
                     f"transformers or TRL; every other stage imports torch, in {secs(min(heavy))} to "
                     f"{secs(max(heavy))}")
    return lines


@block("sweep", "python -m bench.sweep")
def sweep(now: dict, bench: dict) -> list[str]:
    """bench.sweep at two commits, and bench.trainers' DPO with a precomputed reference."""
    before, dpo = bench.get("sweep_before", {}), bench.get("dpo_precomputed_reference")

    def exp(section: dict, key: str) -> str:
        e = section.get(key)
        return f"{', '.join(e['stages_run'])}: {secs(e['wall_seconds'])}, {pct(e['share_of_full_run'])}" if e else "—"

    def compare(section: dict) -> str:
        c = section.get("make_compare")
        return f"{secs(c['wall_seconds'])}, {c['experiments_run']} experiments run" if c else "—"

    rows = [["full `dvc repro`", secs(before["full_repro"]["wall_seconds"]) if before else "—",
             secs(now["full_repro"]["wall_seconds"])],
            ["`dvc exp run -S method=orpo`: stages run, wall, share of the full run",
             exp(before, "exp_run_method_orpo"), exp(now, "exp_run_method_orpo")],
            ["`dvc exp run -S dpo.beta=0.2`: stages run, wall, share of the full run",
             exp(before, "exp_run_dpo_beta_0_2"), exp(now, "exp_run_dpo_beta_0_2")],
            ["`make compare` (the methods of that commit, one seed)", compare(before), compare(now)]]
    timed = {k: v for k, v in now.items() if k != "make_compare"}  # its share counts DVC's own queue workers
    lines = [where(timed, *(v for k, v in before.items() if k != "make_compare"))
             + (f" Before: `{before['rev'][:7]}`." if before else "")
             + " `make compare`'s own share is left out: DVC's queue workers count as other processes.", ""]
    lines += table(["figure", "before the `reference` and `sft_answers` stages", "with them"], rows)
    if dpo:
        lines += ["", f"DPO alone (`bench.trainers.dpo_precomputed_reference`, {dpo['steps']} steps, median of "
                      f"{dpo['repeats']}): ours {dpo['ours_steps_per_second']:.2f} steps per second against plain "
                      f"TRL's {dpo['trl_steps_per_second']:.2f} computing the reference in every step "
                      f"({times(dpo['ours_over_trl_ratio'])}); the one reference pass took "
                      f"{secs(dpo['reference_seconds'])}. " + where(dpo)]
    return lines


@block("evaluate_memory", "python -m bench.evaluate_memory --before 8d09821")
def evaluate_memory(e: dict, bench: dict) -> list[str]:
    rows = [["peak RSS", mib(e["before"]["peak_rss_mib"]), mib(e["after"]["peak_rss_mib"]),
             f"{mib(e['peak_rss_saved_mib'])} less"],
            ["wall time", secs(e["before"]["wall_seconds"]), secs(e["after"]["wall_seconds"]),
             change(e["before"]["wall_seconds"], e["after"]["wall_seconds"])]]
    return [where(e) + f" The {e['shape']} shape: {e['model']['parameters'] / 1e6:.0f}M "
            f"parameters, {mib(e['model']['weights_mib'])} of fp32 weights. `same_metrics`: "
            f"{str(e['same_metrics']).lower()}.", ""] + table(
        ["evaluate", f"before (`{e['before_commit']}`)", "after", "change"], rows)


@block("reward_ensemble", "python -m bench.reward_ensemble --project .")
def reward_ensemble(r: dict, bench: dict) -> list[str]:
    k, sc = r["size"], r["scoring"]
    rows = [["training, per member", f"{secs(r['train_seconds_per_member'])} for {r['steps_per_member']} steps"],
            ["adapter, per member", f"{r['adapter_bytes_per_member']:,} bytes (one more score head on a shared "
                                    f"trunk: {sc['head_bytes']:,} bytes)"],
            [f"scoring {sc['answers_scored']} SFT answers on the one loaded scorer",
             f"member 0 alone {secs(sc['k1_seconds'])}, all {k} {secs(sc[f'k{k}_seconds'])} "
             f"({times(sc['k_over_k1_ratio'])})"],
            ["validation accuracy: members; ensemble",
             f"{', '.join(f'{a:.3f}' for a in r['member_accuracy'])}; {r['ensemble_accuracy']:.3f}"],
            ["disagreement (std of normalized scores): SFT's answers, the policy's, rise",
             f"{r['rm_std_sft']:.3f}, {r['rm_std_policy']:.3f}, {r['rm_uncertainty_rise']:+.3f}"]]
    return [where(r) + f" `--size {k}`, overrides {r.get('overrides', {})}"
            f"{' (--quick: a tiny scratch project)' if r.get('quick') else ''}.", ""] + table(["figure", "value"], rows)


@block("evaluate_cost", "python -m bench.evaluate_cost --project .")
def evaluate_cost(c: dict, bench: dict) -> list[str]:
    rows = [[f"`{n}`", secs(c[n]["wall_seconds"]), mib(c[n]["peak_rss_mib"])] for n in ("sft_answers", "evaluate")]
    return [where(c) + f" Inputs: {c['inputs']}. Prompts answered: {c['prompts_answered']}, answers up to "
            f"{c['max_new_tokens']} tokens. Oracle win rate {c['oracle_win_rate']:.2f}, 95% interval half-width "
            f"{c['oracle_win_rate_ci_half_width']:.3f} (at worst, a 0.5 win rate: {c['worst_case_ci_half_width']:.3f}).",
            ""] + table(["stage", "wall time", "peak RSS"], rows)


@block("qlora", "python -m bench.qlora")
def qlora(q: dict, bench: dict) -> list[str]:
    lo, ql = q["lora"], q["qlora_4bit"]
    rows = [["model footprint (`get_memory_footprint()`)", mib(lo["loading_only"]["model_footprint_mib"]),
             mib(ql["loading_only"]["model_footprint_mib"]), f"{q['qlora_over_lora_model_footprint_ratio']:.2f}"],
            ["resident memory right after loading", mib(lo["loading_only"]["rss_after_loading_mib"]),
             mib(ql["loading_only"]["rss_after_loading_mib"]),
             f"{ql['loading_only']['rss_after_loading_mib'] / lo['loading_only']['rss_after_loading_mib']:.2f}"],
            ["peak RSS of the SFT process", mib(lo["peak_rss_mib"]), mib(ql["peak_rss_mib"]),
             f"{q['qlora_over_lora_peak_rss_ratio']:.2f}"],
            ["seconds per step (train time / steps)", f"{lo['seconds_per_step']:.2f}", f"{ql['seconds_per_step']:.2f}",
             f"{q['qlora_over_lora_seconds_per_step_ratio']:.2f}"]]
    return [where(q) + f" {q['shape']} shape, {q['steps']} steps of batch "
            f"{q['per_device_train_batch_size']}.", ""] + table(["figure", "LoRA (fp32)", "QLoRA 4-bit",
                                                                  "QLoRA / LoRA"], rows)


# -- the files

def render(text: str, bench: dict) -> str:
    def body(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise SystemExit(f"error: unknown block {name!r}; the blocks are: {', '.join(BLOCKS)}.")
        return match.group(1) + "\n".join(BLOCKS[name](bench)) + "\n" + match.group(4)
    return BLOCK.sub(body, text)


def stale(bench: dict) -> list[str]:
    """`file: block` for every block whose text differs from what the JSON gives."""
    found = []
    for path in FILES:
        text = path.read_text()
        new = render(text, bench)
        old_blocks, new_blocks = BLOCK.findall(text), BLOCK.findall(new)
        found += [f"{path.relative_to(REPO)}: {o[1]}" for o, n in zip(old_blocks, new_blocks) if o != n]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the blocks")
    parser.add_argument("--check", action="store_true", help="exit 1 if a block is stale")
    args = parser.parse_args()
    bench = read_json(BENCH)
    if args.check:
        found = stale(bench)
        if found:
            sys.exit("stale generated blocks (run `python -m bench.report --write`): " + "; ".join(found))
        return
    for path in FILES:
        text = path.read_text()
        new = render(text, bench)
        if args.write and new != text:
            path.write_text(new)
            print(f"wrote {path.relative_to(REPO)}")
        elif not args.write:
            print(new)


if __name__ == "__main__":
    main()
