"""The generated tables of docs/BENCHMARKS.md, rendered from the committed result files.

    python -m benchmarks.report            # rewrite every generated block from benchmarks/results/*.json
                                           # (and draw the `dreamer bench` runs' plots in docs/bench/NAME/)
    python -m benchmarks.report --check    # exit 1 if a block differs from what its results give (CI)

A block in the Markdown is

    <!-- generated: NAME -->
    ...
    <!-- /generated -->

and its content is `RENDERERS[NAME](benchmarks/results/NAME.json)`: the command that produced
the results, the machine, and the table. So a number a reader sees is the number a run wrote,
never one typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from benchmarks.markdown import machine_line as _machine
from benchmarks.markdown import table as _table
from benchmarks.report_dreaming import (render_dream_rehearsal, render_dream_reward, render_dream_reward_asked,
                                        render_dream_writing, render_night_cost)
from benchmarks.report_folds import render_fold_nights, render_fold_quality, render_fold_rms, render_grid_threshold

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "BENCHMARKS.md"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)


def render_kill_nights(record: dict) -> str:
    rows = [[r["point"], f"SIG{r['signal']}", r["trials"],
             ", ".join(f"{what} {count}" for what, count in sorted(r["ended"].items())), r["promoted"], r["failures"]]
            for r in record["rows"]]
    lines = [f"`{record['command']}` ({_machine(record)}; {record['wall_seconds'] / 60:.0f} min; an undisturbed "
             f"night of the tiny model took {record['night_seconds']:.1f} s)", "",
             *_table(["kill at", "signal", "#trials", "how the night ended", "#promoted before the kill", "#failures"],
                     rows),
             "", f"**{record['trials']} trials, {record['failures']} failures** (a failure: any check after the "
                 "kill or after the next night that did not hold)."]
    for failed in record.get("failed_trials", [])[:10]:
        lines.append(f"- {failed['point']} SIG{failed['signal']} #{failed['trial']}: {'; '.join(failed['problems'])}")
    return "\n".join(lines) + "\n"


def render_chat_threads(record: dict) -> str:
    rows = [[r["condition"], r["threads"], r["decode_tok_s"], r["first_token_s"], r["load_before"]]
            for r in record["rows"]]
    lines = [f"`{record['command']}` ({_machine(record)}; {record['tokens']} tokens, median of {record['repeats']}; "
             f"the stand-in night trains on {record['sleep_threads']} thread(s))", "",
             *_table(["condition", "#llama.cpp threads", "#decode tok/s", "#first token, s", "#load before"], rows)]
    return "\n".join(lines) + "\n"


def render_parity_gap(record: dict) -> str:
    from statistics import mean

    rows = [[f"`{r['prompt'].replace(chr(10), ' ').replace('|', '/')}`", f"{r['base_gap']:.4f}",
             f"{r['adapted_gap']:.4f}", f"{r['unpermuted_gap']:.4f}", f"{r['expert_effect']:.2f}"]
            for r in record["rows"]]
    base, adapted, wrong = (mean(r[key] for r in record["rows"]) for key in ("base_gap", "adapted_gap", "unpermuted_gap"))
    rows.append(["**mean**", f"**{base:.4f}**", f"**{adapted:.4f}** ({adapted / base:.1f}x)",
                 f"**{wrong:.4f}** ({wrong / base:.0f}x)", ""])
    lines = [f"`{record['command']}` ({_machine(record)}; llama.cpp built with {record['llama_features']})", "",
             *_table(["prompt", "#base gap", "#exported expert", "#unpermuted control", "#expert's effect"], rows)]
    return "\n".join(lines) + "\n"


def render_bench(record: dict) -> str:
    """A `dreamer bench` run (its bench.json, committed as is): the headline, then every table of its report."""
    from dreamer.bench import report

    from dreamer.bench.arms import ARMS

    b = record["bench"]
    if b.get("data"):
        command = f"dreamer bench --data {b['data']} --probes {b['probes']} --preset {b['preset']}"
    else:
        command = f"dreamer bench --days {b['days']} --facts {b['facts']} --seed {b['seed']} --preset {b['preset']}"
        if b.get("updates", 2) != 2:
            command += f" --updates {b['updates']}"
    if b.get("night_seed") is not None:
        command += f" --night-seed {b['night_seed']}"
    if b["arms"] != list(ARMS):
        command += f" --arms {','.join(b['arms'])}"
    dreaming = report.dreaming_lines(record)
    if b.get("days", 0) >= 5:
        dreaming += [*([""] if dreaming else []), *report.retention_lines(record)]
    lines = [f"`{command}` ({report.machine_line(record)}) {report.completeness(record)}".replace(f"{ROOT}/", ""), "",
             *report.headline(record), "", *dreaming, *([""] if dreaming else []),
             "Generation (does the reply name the fact), after each arm's last night:", "",
             *report.kinds_table(record, "gen"), "", "Multiple choice, the same probes:", "",
             *report.kinds_table(record, "mc"), "", "Night by night:", "", *report.nights_table(record), "",
             "Forgetting curves (each day's recall probes, generation):", "", *report.forgetting_table(record), "",
             "Day by day after the last night (generation; general probes count on day 1):", "",
             *report.days_table(record)]
    if table := report.served_table(record):
        lines += ["", "What the chat serves after each night (deep sleep):", "", *table]
    if b.get("days", 0) >= 5 and (table := report.misses_table(record)):
        lines += ["", "What the replies say instead of an earlier day's fact (`dreamer.bench.misses`: the earlier "
                      "days' recall probes the reply missed, by the first class that fits):", "", *table]
    if table := report.dreams_table(record):
        night = report.last_scored(record, "dream")
        lines += ["", "Dreaming, night by night:", "", *table, "",
                  f"Dreams of night {night} (the morning report's examples):", "", *report.dream_examples(record, night)]
    return "\n".join(lines) + "\n"


def render_forget_quality(record: dict) -> str:
    """benchmarks/forget_quality.py: the forgotten conversation's probes and the others, step by step."""
    stages = list(next(iter(record["table"].values())))
    rows = [[group, *[f"{t[s]['mc']}/{t[s]['n']}, {t[s]['gen']}/{t[s]['n']}" for s in stages]]
            for group, t in record["table"].items()]
    return "\n".join([f"`{record['command']}` ({_machine(record)})", "",
                       f"`dreamer forget {record['conversation']} --yes` said: {record['forget']}", "",
                       f"The next `dreamer sleep --now` said: {record['sleep']}", "",
                       "Probes right, multiple choice and generation (right / asked):", "",
                       *_table(["probes about", *stages], rows)]) + "\n"


def render_merge_step(record: dict) -> str:
    """benchmarks/merge_step.py: a training step through N experts as adapters against merged."""
    m = record["median_s"]
    return (f"`{record['command']}` ({_machine(record)}): {record['step']}, through {record['experts']} experts as "
            f"adapters {m['adapters']} s, merged {m['merged']} s: **{record['speedup']}x** (medians of "
            f"{len(record['rounds']['merged'])} alternated rounds); the two models' logits differ by at most "
            f"{record['max_logit_gap']:.1e}.\n")


def render_nf4_merge(record: dict) -> str:
    """benchmarks/nf4_merge.py: the stack merged into an NF4 base, quantized again or kept in bf16."""
    rows = [[name, f"{c['kl_general']:.4f}", f"{c['kl_probes']:.4f}", f"{c['kl_probes_to_today']:.4f}",
             f"{c['answer_loss']:.3f}", f"{c['mc_right']}/{record['probes']}",
             "-" if c["memory_kept"] is None else f"{c['memory_kept']:.0%}"]
            for name, c in record["conditions"].items()]
    check = record["nf4_check"]
    return "\n".join([
        f"`{record['command']}` ({_machine(record)}; {record['experts']} experts changing {record['changed_layers']} "
        f"layers, {record['texts']['general']} general texts, {record['probes']} probes; the NF4 weights of all "
        f"{check['layers']} quantized layers equal what `load_base` holds in NF4 to {check['max_abs_gap']:.1e})", "",
        *_table(["weights", "#KL general", "#KL probes", "#KL probes to today's CUDA night", "#answer loss",
                 "#multiple choice", "#memory kept"], rows)]) + "\n"


def render_sampling(record: dict) -> str:
    """benchmarks/sampling.py: the chat's sampling candidates on a fixed set of turns."""
    rows = []
    for entry in record["settings"]:
        t, top_p, min_p, penalty = entry["setting"]
        chosen = " **(chosen)**" if entry["setting"] == record.get("chosen") else ""
        first = " (the old default)" if entry is record["settings"][0] and len(record["settings"]) > 1 else ""
        rows.append([f"{t}, {top_p}, {min_p}, {penalty}{first}{chosen}", f"{entry['good']:.0%}", f"{entry['english']:.0%}",
                     f"{entry['loop']:.0%}", f"{entry['cut']:.0%}", f"{entry['fact']:.0%}", f"{entry['mean_tokens']:.0f}"])
    replies = record["settings"][0]["replies"]
    model = record.get("model", "embedded")
    model = "the embedded SmolLM2-135M-Instruct" if model == "embedded" else Path(model).name
    lines = [f"`{record['command'].strip()}` ({_machine(record)}; {model}; {record['turns']} turns x "
             f"{len(record['seeds'])} seeds = {replies} replies a setting, max_reply_tokens {record['max_reply_tokens']})", "",
             *_table(["temperature, top_p, min_p, repeat_penalty", "#good", "#English kept", "#loops", "#cut at the limit",
                      "#fact named", "#mean tokens"], rows)]
    return "\n".join(lines) + "\n"


def render_paired_code(record: dict) -> str:
    """benchmarks/paired_code.py: one arm, the same days and seeds, before and after a code change."""
    from dreamer.bench.report import pct

    rows = []
    for n in record["nights"]:
        a, b, pairs = n["before"], n["after"], n["recall_gen_pairs"]

        def change(key: str) -> str:
            return f"{pct(a[key])} → {pct(b[key])}"

        rows.append([n["night"], change("recall_gen"), f"{pairs['only_before']} / {pairs['only_after']}",
                     change("recall_mc"), change("day1_gen"), change("day1_mc"), change("implication_gen"),
                     change("general_gen"), f"{a['greeting_replies']}/{a['replies']} → {b['greeting_replies']}/{b['replies']}",
                     f"{a['drift_kl']:.4f} → {b['drift_kl']:.4f}"])
    runs = record["runs"]
    where = "; ".join(f"{name}: code {r['commit']}, {r['machine']['cpu']}" for name, r in runs.items())
    return "\n".join([
        f"`{record['command']}` (`{record['arm']}` arm, {record['bench']['days']} synthetic days x "
        f"{record['bench']['facts']} facts, seed {record['bench']['seed']}, preset {record['bench']['preset']}; {where}). "
        f"The change: {record['change']}. Before → after, night by night:", "",
        *_table(["#night", "recall (gen)", "#recall pairs: only before / only after", "recall (mc)",
                 "day 1 recall (gen)", "day 1 recall (mc)", "implication (gen)", "general (gen)",
                 "replies opening with a greeting", "drift KL"], rows)]) + "\n"


def render_distill_step(record: dict) -> str:
    """benchmarks/distill_step.py --alternate: a distillation step with the system turn shared and whole, paired."""
    modes = record["modes"]
    rows = [[name, m["steps"], f"{m['mean_s']:.1f}", f"{m['median_s']:.1f}",
             ", ".join(f"{part} {s:.1f}" for part, s in sorted(m["phase_s_per_step"].items()))]
            for name, m in modes.items()]
    steps = list(zip(record["step_modes"], record["step_s"]))
    pairs = [dict(steps[i:i + 2]) for i in range(0, len(steps) - 1, 2)]  # adjacent steps: {mode: seconds}
    faster = sum(pair["shared"] < pair["whole"] for pair in pairs if len(pair) == 2)
    ratio = modes["shared"]["mean_s"] / modes["whole"]["mean_s"]
    return "\n".join([f"`{record['command']}` ({_machine(record)}; {record['device_plan']}; peak RSS "
                      f"{record['peak_rss_mb']:.0f} MiB)", "",
                      *_table(["system turn", "#steps", "#mean s", "#median s", "seconds a step in each part"], rows),
                      "", f"The shared system turn's step took {ratio:.2f} of the whole prompts' on average; it was the "
                          f"faster of each adjacent pair of steps {faster} times in {len(pairs)}."]) + "\n"


RENDERERS = {"kill_nights": render_kill_nights, "chat_threads": render_chat_threads,
             "parity_gap_avx512": render_parity_gap, "parity_gap_avx2": render_parity_gap,
             "bench_synthetic": render_bench, "bench_heldout": render_bench, "bench_dreaming": render_bench,
             "bench_dreaming_seed1": render_bench, "bench_dreaming_grounded": render_bench,
             "bench_dreaming_oneturn": render_bench, "bench_dreaming_voice": render_bench,
             "bench_dreaming_own": render_bench, "bench_dreaming_answer": render_bench,
             "bench_dreaming_self": render_bench, "bench_dreaming_asked": render_bench,
             "bench_long": render_bench, "fold_quality": render_fold_quality,
             "forget_quality": render_forget_quality, "merge_step": render_merge_step,
             "nf4_merge": render_nf4_merge, "sampling": render_sampling, "sampling_gemma3": render_sampling,
             "fold_rms": render_fold_rms, "bench_phatic": render_paired_code,
             "bench_rehearsal": render_paired_code, "night_cost": render_night_cost, "fold_nights": render_fold_nights,
             "grid_threshold": render_grid_threshold, "dream_writing": render_dream_writing,
             "dream_reward": render_dream_reward, "dream_rehearsal": render_dream_rehearsal,
             "dream_reward_asked": render_dream_reward_asked,
             "distill_step_prefix": render_distill_step}
PLOTS = ROOT / "docs" / "bench"  # each bench block's plots, drawn again by every run of this command


def rendered(text: str) -> str:
    def block(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise SystemExit(f"{DOC}: no renderer for the generated block {name!r} (known: {', '.join(RENDERERS)})")
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            raise SystemExit(f"{DOC}: the block {name!r} needs {path}, which is missing")
        return match.group(1) + RENDERERS[name](json.loads(path.read_text())) + match.group(4)

    return BLOCK.sub(block, text)


def bench_blocks(text: str) -> list[str]:
    return [m["name"] for m in BLOCK.finditer(text) if RENDERERS.get(m["name"]) is render_bench]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the document is not what the results give")
    args = parser.parse_args(argv)
    current = DOC.read_text(encoding="utf-8")
    wanted = rendered(current)
    if args.check:
        if wanted != current:
            print(f"{DOC} differs from what benchmarks/results/ gives: run `python -m benchmarks.report`")
            return 1
        # The plots are not compared byte for byte (matplotlib versions draw them differently); they must exist.
        missing = [str(PLOTS / name / f"{plot}.png") for name in bench_blocks(current)
                   for plot in ("kinds", "forgetting", "cost") if not (PLOTS / name / f"{plot}.png").is_file()]
        if missing:
            print(f"missing plots: {', '.join(missing)}: run `python -m benchmarks.report`")
            return 1
        print(f"{DOC}: {len(BLOCK.findall(current))} generated blocks match their results")
        return 0
    DOC.write_text(wanted, encoding="utf-8")
    from dreamer.bench.report import plots

    for name in bench_blocks(current):
        plots(json.loads((RESULTS / f"{name}.json").read_text()), PLOTS / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
