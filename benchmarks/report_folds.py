"""The generated blocks of docs/BENCHMARKS.md's deep sleep: what the chat serves after a fold
(benchmarks.report renders every block; these are its fold renderers)."""

from __future__ import annotations

from benchmarks.markdown import machine_line as _machine
from benchmarks.markdown import table as _table


def render_fold_quality(record: dict) -> str:
    """benchmarks/fold_quality.py: fidelity (KL to what the nights trained) and decode speed per way of serving."""
    kl, speed, fold = record["kl_to_trained"], record["decode_tok_s"], record["fold"]
    bare = speed["bare base"]["median"]
    replies = record.get("replies", {})  # older records have none
    asked_kinds = [k for k in ("recall", "implication", "general") if replies and k in next(iter(replies.values()))]
    rows = []
    for name, figures in kl.items():
        qtype = name.removeprefix("folded ") if name.startswith("folded ") else None
        decode = speed.get(name, {}).get("median")
        if name == "llama.cpp base (no memory)":
            decode = bare
        elif name == "llama.cpp base + experts as adapters":
            decode = speed.get(f"base + {record['experts']} adapters", {}).get("median")
        asked = [f"{replies[name][k][0]}/{replies[name][k][1]}" if name in replies else "-" for k in asked_kinds]
        rows.append([name, f"{figures['general']:.4f}", f"{figures['probes']:.4f}", *asked,
                     "-" if decode is None else f"{decode:.1f}", "-" if decode is None else f"{decode / bare:.2f}x",
                     f"{fold[qtype]['mib']}" if qtype else "-", f"{fold[qtype]['seconds']}" if qtype else "-"])
    many = next((n for n in speed if n.startswith("base + ") and n != f"base + {record['experts']} adapters"), None)
    lines = [f"`{record['command']}` ({_machine(record)}; {record['experts']} experts of the home, "
             f"{record['texts']['general']} general texts and {record['texts']['probes']} probe sentences, "
             f"decode: median of {len(speed['bare base']['rounds'])} alternated rounds, one thread)", "",
             *_table(["served as", "#KL general", "#KL probes", *[f"#{k} (reply)" for k in asked_kinds],
                      "#decode tok/s", "#vs bare", "#MiB", "#fold s"], rows)]
    if replies:
        lines[0] = lines[0][:-1] + ("; replies: the bench's recall and implication probes of the days the home "
                                    "learned and its general-knowledge probes, asked as the chat asks: reply names the answer / asked)")
    if "calibration" in record:
        c = record["calibration"]
        lines += ["", f"The calibrated fold is fitted on {c['texts']} texts ({c['tokens']} tokens: the home's "
                      f"conversations under the chat's system prompt, which tell the facts the probes ask, and the "
                      f"general prompts; not the general texts measured), in {c['seconds']} s."]
    if many:
        lines += ["", f"The same memory spread over {many.split()[2]} adapters (a stack of that many nights) decodes at "
                      f"{speed[many]['median']:.1f} tok/s ({speed[many]['median'] / bare:.2f}x). The chat's swap to a "
                      f"folded model (`LlamaRuntime.load_model`, n_ctx {record['swap_s']['n_ctx']}): median "
                      f"{record['swap_s']['median']} s, at most {record['swap_s']['max']} s over {record['swap_s']['n']}."]
    return "\n".join(lines) + "\n"


def render_fold_rms(record: dict) -> str:
    """benchmarks/fold_rms.py: a night's weight change in steps of the base's Q4_1 grid."""
    nights = record["nights"]
    medians = [n["median"] for n in nights]
    p90s = [n["p90"] for n in nights]
    stack = record["stack"]
    return (f"`{record['command']}` ({_machine(record)}; the experts of {record['home']}): per Q4_1 block of the "
            f"MLP projections, RMS of a night's change in steps of the block's grid: median {min(medians):.3f}-"
            f"{max(medians):.3f}, 90th percentile {min(p90s):.3f}-{max(p90s):.3f} over {len(nights)} nights; the "
            f"{stack['experts']} nights together (what a fold adds): median {stack['median']:.3f}, 90th percentile "
            f"{stack['p90']:.3f}, largest {stack['max']:.2f}.\n")


def render_grid_threshold(record: dict) -> str:
    """benchmarks/grid_threshold.py: the grid fold at each MIN_STEP, on one home."""
    kl, replies = record["kl_to_trained"], record.get("replies", {})
    kinds = ("recall", "implication", "general")
    rows = [[step, f"{figures['general']:.4f}", f"{figures['probes']:.4f}",
             *[f"{replies[step][k][0]}/{replies[step][k][1]}" if step in replies else "-" for k in kinds]]
            for step, figures in kl.items()]
    return "\n".join([
        f"`{record['command']}` ({_machine(record)}; {record['experts']} experts, {record['texts']['general']} general "
        f"texts and {record['texts']['probes']} probe sentences; replies asked as the chat asks: named / asked)", "",
        *_table(["#least change moved, in grid steps", "#KL general", "#KL probes", *[f"#{k} (reply)" for k in kinds]],
                rows)]) + "\n"


def render_fold_nights(record: dict) -> str:
    """benchmarks/fold_nights.py: each fold type served after every night of one bench run, paired."""
    nights = record["nights"]
    types = record["types"]
    first = next(iter(nights.values()))
    names = [n for n in first["named"] if n != "bare base"]
    rows, pairs = [], {kind: {name: 0 for name in names} for kind in ("recall", "general")}
    for night, n in nights.items():
        flags = {name: {kind: [f == "1" for f, k in zip(named, n["kinds"]) if k == kind] for kind in pairs}
                 for name, named in n["named"].items()}

        def named(name: str, kind: str) -> str:
            return f"{sum(flags[name][kind])}/{len(flags[name][kind])}"

        for kind in pairs:  # probes named by one fold and not the other
            a, b = flags[names[0]][kind], flags[names[1]][kind]
            pairs[kind][names[0]] += sum(x and not y for x, y in zip(a, b))
            pairs[kind][names[1]] += sum(y and not x for x, y in zip(a, b))
        text, forced = n["general_text"], n["decode_tok_s"]["forced"]
        generated = n["decode_tok_s"]["generated"]
        rows.append([night, *[named(name, "recall") for name in names],
                     *[named(name, "general") for name in ["bare base", *names]],
                     *[f"{text[name]['perplexity']:.2f}" for name in ["bare base", *names]],
                     *[f"{text[name]['kl_to_trained']:.3f}" for name in names],
                     *[f"{forced[name]['ratio']:.2f}x" for name in names],
                     *[f"{generated[name]['ratio']:.2f}x" for name in names],
                     *[f"{n['fold'][name]['mib']}" for name in names], f"{n['load_at_start']:.1f}"])
    sessions = "; ".join(f"{s['machine']['cpu']}, code {s['commit']}, from {s['started']}" for s in record["sessions"])
    columns = ["#after night", *[f"#recall: {t}" for t in names], "#general: bare", *[f"#general: {t}" for t in names],
               "#perplexity: bare", *[f"#perplexity: {t}" for t in names], *[f"#KL: {t}" for t in names],
               *[f"#decode forced: {t}" for t in names], *[f"#decode as the chat: {t}" for t in names],
               *[f"#MiB: {t}" for t in names], "#load"]
    recall, general = pairs["recall"], pairs["general"]
    return "\n".join([
        f"`{record['command']}` (the run {record['run']}; {sessions}; types {', '.join(types)}). Replies: named / "
        f"asked, recall probes of every day so far and the 12 general questions; perplexity and KL (from what the "
        f"nights trained) on the 12 general texts of assets/general_heldout.jsonl; decode against the bare base, median of "
        f"{len(first['decode_tok_s']['forced']['bare base']['rounds'])} rotated rounds, one thread:", "",
        *_table(columns, rows), "",
        f"Over the {len(nights)} nights, probe by probe: recall named by {names[0]} only {recall[names[0]]}, by "
        f"{names[1]} only {recall[names[1]]}; general named by {names[0]} only {general[names[0]]}, by {names[1]} "
        f"only {general[names[1]]}."]) + "\n"
