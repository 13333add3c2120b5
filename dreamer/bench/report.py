"""A `dreamer bench` run as numbers, Markdown and plots, from its bench.json alone.

    summarize(result) -> {"cells": {(arm, night): {...}}, "headline": [...], ...}
    markdown(result)  -> report.md's text;  plots(result, folder) -> the PNG paths

Every figure is a share of the probes asked the morning after a night (dreamer.bench.run):
`gen` is the generation score (does the reply name the fact), the one a user sees, and it leads;
`mc` is multiple choice. The headline compares `sleep` with `recall` (the text memory) after the
last night, per probe kind, with the paired count (probes only one of the two got right), and
what each costs: a night's wall time and peak memory, and the prompt tokens recall spends. With
both `sleep` and `dream` in the run, the next lines are Dreaming's: the mean difference per kind
over the paired nights, the dream reward rate by night, and the cost.
docs/BENCHMARKS.md renders its learning tables with the same functions (benchmarks/report.py).
"""

from __future__ import annotations

from pathlib import Path

from dreamer.bench.misses import CLASSES as MISS_CLASSES
from dreamer.bench.misses import misses
from dreamer.eval.probes import KINDS

CONTROLS = ("inday", "generic")


def share(flags: list) -> float | None:
    flags = [f for f in flags if f is not None]
    return sum(flags) / len(flags) if flags else None


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def cell(result: dict, arm: str, night: int) -> dict | None:
    """One arm after one night: per kind and per day, controls, drift, cost; None if not scored yet."""
    unit = result["units"].get(f"{arm}/{night}", {})
    score = unit.get("score")
    if not score:
        return None
    rows, train = score["probes"], unit.get("train", {})
    kinds = {k: {"n": len(r), "gen": share([x["gen"] for x in r]), "mc": share([x["mc"] for x in r])}
             for k in (*KINDS, *CONTROLS) if (r := [x for x in rows if x["kind"] == k])}
    days, by_day = {}, {}
    for d in result["days"][:night]:
        r = [x for x in rows if x["kind"] == "recall" and x["day"] == d["day"]]
        if r:
            days[d["day"]] = {"gen": share([x["gen"] for x in r]), "mc": share([x["mc"] for x in r])}
        by_day[d["day"]] = {k: share([x["gen"] for x in rows if x["kind"] == k and x["day"] == d["day"]])
                            for k in KINDS}
    asked = [x for x in rows if x["kind"] not in CONTROLS]
    return {"kinds": kinds, "days": days, "by_day": by_day, "drift_kl": score.get("drift_kl"), "perplexity": score.get("perplexity"),
            "memory_tokens": sum(x.get("memory_tokens", 0) for x in asked) / max(1, len(asked)),
            "status": train.get("status", "-"), "wall_s": train.get("wall_s"), "peak_rss_mb": train.get("peak_rss_mb"),
            "rows": {x["id"]: x for x in rows}}


def nights(result: dict) -> int:
    return len(result["days"])


def last_scored(result: dict, arm: str) -> int:
    return max((k for k in range(1, nights(result) + 1) if cell(result, arm, k)), default=0)


def headline(result: dict) -> list[str]:
    """The comparison a user choosing a memory needs, in sentences."""
    arms = result["bench"]["arms"]
    if "sleep" not in arms or "recall" not in arms:
        return ["(the headline compares `sleep` with `recall`: run both arms to see it)"]
    night = min(last_scored(result, "sleep"), last_scored(result, "recall"))
    if not night:
        return ["(no night is scored for both `sleep` and `recall` yet)"]
    sleep, recall = cell(result, "sleep", night), cell(result, "recall", night)
    wins, losses, ties = [], [], []
    for kind in KINDS:
        if kind not in sleep["kinds"] or kind not in recall["kinds"]:
            continue
        ids = [i for i, x in sleep["rows"].items() if x["kind"] == kind and i in recall["rows"]]
        a = sum(1 for i in ids if sleep["rows"][i]["gen"] and not recall["rows"][i]["gen"])
        b = sum(1 for i in ids if recall["rows"][i]["gen"] and not sleep["rows"][i]["gen"])
        text = (f"{kind} {pct(sleep['kinds'][kind]['gen'])} vs {pct(recall['kinds'][kind]['gen'])} "
                f"({len(ids)} probes; only sleep right on {a}, only recall on {b})")
        (wins if a > b else losses if b > a else ties).append(text)
    lines = [f"After night {night} of {nights(result)}, asked as the chat asks (reply names the fact), "
             f"`sleep` against `recall` (the chat's retrieval as a text memory):"]
    lines += [f"- sleep ahead: {'; '.join(wins) or 'nowhere'}",
              f"- recall ahead: {'; '.join(losses) or 'nowhere'}",
              f"- level: {'; '.join(ties) or 'nowhere'}"]
    facts = [i for i, x in recall["rows"].items() if x["kind"] in ("recall", "implication", "update") and i in sleep["rows"]]
    missed = [i for i in facts if not recall["rows"][i].get("memory_tokens")]
    if facts:
        lines.append(f"- where retrieval found nothing for the question ({len(missed)} of {len(facts)} questions about "
                     f"told facts): sleep {pct(share([sleep['rows'][i]['gen'] for i in missed]))}, recall "
                     f"{pct(share([recall['rows'][i]['gen'] for i in missed]))}")
    walls = [c["wall_s"] for k in range(1, night + 1) if (c := cell(result, "sleep", k)) and c["wall_s"]]
    peaks = [c["peak_rss_mb"] for k in range(1, night + 1) if (c := cell(result, "sleep", k)) and c["peak_rss_mb"]]
    statuses = [cell(result, "sleep", k)["status"] for k in range(1, night + 1)]
    cost = (f"a night took {min(walls) / 60:.0f}-{max(walls) / 60:.0f} min, peak {max(peaks):.0f} MiB"
            if walls and peaks else "no night's cost recorded")
    lines.append(f"- cost: sleep {cost} (nights: {', '.join(statuses)}), and no prompt tokens; recall spends "
                 f"{recall['memory_tokens']:.0f} prompt tokens a question, every question, and no night.")
    return lines


def paired(a: dict, b: dict, kind: str, measure: str = "gen") -> tuple[int, int, int]:
    """(probes of `kind` both cells asked, right only in `a`, right only in `b`)."""
    ids = [i for i, x in a["rows"].items() if x["kind"] == kind and i in b["rows"]]
    only_a = sum(1 for i in ids if a["rows"][i][measure] and not b["rows"][i][measure])
    only_b = sum(1 for i in ids if b["rows"][i][measure] and not a["rows"][i][measure])
    return len(ids), only_a, only_b


def dreaming_lines(result: dict) -> list[str]:
    """`dream` against `sleep` (Dreaming on and off, the same days and night seeds), night by night."""
    if not {"sleep", "dream"} <= set(result["bench"]["arms"]):
        return []
    pairs = [(k, a, b) for k in range(1, nights(result) + 1)
             if (a := cell(result, "dream", k)) and (b := cell(result, "sleep", k))]
    if not pairs:
        return ["(no night is scored for both `dream` and `sleep` yet)"]
    lines = [f"Dreaming: `dream` against `sleep` (stage 1 alone) on {len(pairs)} paired night(s); per kind, the mean "
             "over nights of the difference in points, generation then multiple choice, with the paired count:"]
    for kind in ("recall", "implication", "update", "abstain", "general"):
        diffs = {m: [100 * (a["kinds"][kind][m] - b["kinds"][kind][m]) for _, a, b in pairs
                     if kind in a["kinds"] and kind in b["kinds"] and a["kinds"][kind][m] is not None
                     and b["kinds"][kind][m] is not None] for m in ("gen", "mc")}
        if not diffs["gen"]:
            continue
        counts = [paired(a, b, kind) for _, a, b in pairs]
        lines.append(f"- {kind}: {sum(diffs['gen']) / len(diffs['gen']):+.1f} points by generation, "
                     f"{sum(diffs['mc']) / len(diffs['mc']):+.1f} by multiple choice ({sum(c[0] for c in counts)} "
                     f"probe-nights; only dream right on {sum(c[1] for c in counts)}, only sleep on "
                     f"{sum(c[2] for c in counts)})")
    rates = [f"{(d['dreaming'] or {}).get('reward_rate') or 0:.0%}" if (d := result["units"][f"dream/{k}"].get("train"))
             and d.get("dreaming") else "-" for k, _, _ in pairs]
    walls = [(a["wall_s"], b["wall_s"]) for _, a, b in pairs if a["wall_s"] and b["wall_s"]]
    lines.append(f"- dream reward rate by night: {', '.join(rates)}")
    if walls:
        lines.append(f"- cost: a dreaming night {sum(w[0] for w in walls) / len(walls) / 60:.0f} min against "
                     f"{sum(w[1] for w in walls) / len(walls) / 60:.0f} min for stage 1 alone (mean of {len(walls)})")
    return lines


def dreams_table(result: dict) -> list[str]:
    """Each `dream` night: what Dreaming wrote, grounded, kept and rewarded, and where the night's time went."""
    rows = []
    for k in range(1, nights(result) + 1):
        train = result["units"].get(f"dream/{k}", {}).get("train") or {}
        dreams, phases = train.get("dreaming"), train.get("phases") or {}
        if not dreams:
            continue
        writer = dreams.get("writer") or {}
        dream_s = sum(v for name, v in phases.items() if name.startswith("dream:"))
        rows.append([str(k), train["status"], str(dreams["written"]), str(dreams.get("grounded", "-")),
                     str(dreams["kept"]), str(dreams["rewarded"]),
                     pct(dreams.get("reward_rate")), "yes" if writer.get("trained") else "no",
                     dreams.get("error") or "-", f"{dream_s / 60:.1f}",
                     ", ".join(f"{name} {v / 60:.1f}" for name, v in phases.items()),
                     "-" if train.get("wall_s") is None else f"{train['wall_s'] / 60:.1f}"])
    if not rows:
        return []
    return _table(["night", "outcome", "written", "grounded", "kept", "rewarded", "reward rate", "writer learned", "error",
                   "Dreaming min", "phases (min; the last one runs until the report)", "night min"], rows)


def dream_examples(result: dict, night: int) -> list[str]:
    """The rewarded and rejected dreams a `dream` night's morning report shows."""
    dreams = (result["units"].get(f"dream/{night}", {}).get("train") or {}).get("dreaming")
    if not dreams:
        return []
    rows = [[label, d["kind"], d["request"].replace("|", "/")[:90], d["reply"].replace("|", "/").replace("\n", " ")[:90],
             f"{d['tau_delta']:+.4f}"] for label in ("rewarded", "rejected") for d in dreams["examples"][label]]
    return _table(["", "kind", "request", "reply", "tau change"], rows) if rows else []


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def kinds_table(result: dict, measure: str, night: int | None = None) -> list[str]:
    """Per arm (rows) and probe kind (columns) after `night` (default: each arm's last scored night)."""
    kinds = [k for k in KINDS if any((c := cell(result, a, night or last_scored(result, a))) and k in c["kinds"]
                                     for a in result["bench"]["arms"])]
    rows = []
    for arm in result["bench"]["arms"]:
        k = night or last_scored(result, arm)
        c = cell(result, arm, k) if k else None
        if c:
            rows.append([arm, str(k)] + [f"{pct(c['kinds'][kind][measure])} (n={c['kinds'][kind]['n']})"
                                         if kind in c["kinds"] else "-" for kind in kinds])
    return _table(["arm", "night"] + kinds, rows)


def nights_table(result: dict) -> list[str]:
    """Every arm after every night: generation per kind, controls, drift, cost."""
    rows = []
    for arm in result["bench"]["arms"]:
        for k in range(1, nights(result) + 1):
            c = cell(result, arm, k)
            if not c:
                continue
            g = lambda kind, m="gen": pct(c["kinds"][kind][m]) if kind in c["kinds"] else "-"  # noqa: E731
            rows.append([arm, str(k), c["status"], *[g(kind) for kind in KINDS],
                         f"{g('inday', 'mc')}, {g('generic', 'mc')}",
                         "-" if c["drift_kl"] is None else f"{c['drift_kl']:.4f}",
                         "-" if c["perplexity"] is None else f"{c['perplexity']:.2f}",
                         f"{c['memory_tokens']:.0f}", "-" if c["wall_s"] is None else f"{c['wall_s'] / 60:.1f}",
                         "-" if c["peak_rss_mb"] is None else f"{c['peak_rss_mb']:.0f}"])
    return _table(["arm", "night", "night's outcome", *[f"{k} (gen)" for k in KINDS], "controls: in-day, generic (mc)",
                   "drift KL", "perplexity", "memory tokens", "night min", "peak MiB"], rows)


def served_table(result: dict) -> list[str]:
    """The sleep arms' served model night by night: folded or adapters, size, decode against bare."""
    rows = []
    for arm in result["bench"]["arms"]:
        for k in range(1, nights(result) + 1):
            served = result["units"].get(f"{arm}/{k}", {}).get("served")
            if not served:
                continue
            how = "folded" if served["folded"] else f"{served['adapters']} adapters"
            speed = (f"{served['decode_tok_s']}", f"{served['bare_tok_s']}", f"{served['ratio']:.2f}x") \
                if served.get("ratio") is not None else ("not measured", "-", served.get("error", "-")[:60])
            rows.append([arm, str(k), how, f"{served['mib']}", *speed])
    return _table(["arm", "night", "served as", "MiB", "decode tok/s", "bare tok/s", "ratio"], rows) if rows else []


def forgetting_table(result: dict) -> list[str]:
    """Recall (gen) of each day's facts after each night: the forgetting curves."""
    days = [d["day"] for d in result["days"]]
    rows = []
    for arm in result["bench"]["arms"]:
        for k in range(1, nights(result) + 1):
            c = cell(result, arm, k)
            if c:
                rows.append([arm, str(k)] + [pct(c["days"][d]["gen"]) if d in c["days"] else "" for d in days])
    return _table(["arm", "after night"] + [f"day {i + 1} ({d})" for i, d in enumerate(days)], rows)


def misses_table(result: dict, arm: str = "sleep") -> list[str]:
    """Night by night: the earlier days' recall probes the reply missed, by what it said instead
    (dreamer.bench.misses)."""
    rows = []
    for night in range(2, nights(result) + 1):
        if m := misses(result, arm, night):
            repeated = f'"{m["repeated"][0][:40]}" ({m["repeated"][1]})' if m["repeated"] else "-"
            rows.append([str(night), f"{m['missed']}/{m['asked']}", *[str(m[c]) for c in MISS_CLASSES], repeated])
    return _table(["after night", "missed", *MISS_CLASSES, "the most repeated miss"], rows) if rows else []


def days_table(result: dict) -> list[str]:
    """Each arm after its last night, day by day, per kind (generation)."""
    rows = []
    for arm in result["bench"]["arms"]:
        k = last_scored(result, arm)
        c = cell(result, arm, k) if k else None
        for i, (day, kinds) in enumerate((c or {}).get("by_day", {}).items()):
            rows.append([arm, str(k), f"day {i + 1} ({day})"] + [pct(kinds[kind]) for kind in KINDS])
    return _table(["arm", "after night", "day"] + list(KINDS), rows)


def machine_line(result: dict) -> str:
    m, b = result["machine"], result["bench"]
    updates = "" if b.get("updates", 2) == 2 else f" ({b['updates']} updates a day)"
    source = f"--data {b['data']} --probes {b['probes']}" if b.get("data") else \
        f"synthetic, {b['days']} days x {b['facts']} facts{updates}, seed {b['seed']}"
    load = result.get("loadavg") or [0]
    jobs = sorted({s["jobs"] for s in result.get("sessions", [])})
    lanes = f", {'/'.join(map(str, jobs))} lane(s) side by side (--jobs)" if jobs else ""
    resumed = sorted({s["cpu"] for s in result.get("sessions", []) if s.get("cpu") and s["cpu"] != m["cpu"]})
    lanes += f"; resumed on {', '.join(resumed)}" if resumed else ""
    return (f"{source}; preset {b['preset']}, night seed {b['night_seed'] if b['night_seed'] is not None else b['seed']}"
            f"{', quick (tiny model)' if b.get('quick') else ''}. Machine: {m['cpu']}, {m['cores']} cores, Python "
            f"{m['python']}, torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, dreamer "
            f"{m['dreamer']}; load average {min(load):.1f}-{max(load):.1f}{lanes}. Started {result['started']}.")


def retention_lines(result: dict, arm: str = "sleep") -> list[str]:
    """Months of nights, the issue's three goals: night 1's facts kept, the chat's speed, drift."""
    scored = [k for k in range(1, nights(result) + 1) if cell(result, arm, k)]
    if len(scored) < 2:
        return []
    first_day, last = result["days"][0]["day"], scored[-1]
    after_one, now = cell(result, arm, 1), cell(result, arm, last)
    lines = [f"Over {last} nights of `{arm}` (goals: night 1's facts after the last night at >= 90% of their "
             "score right after night 1; the chat at >= 0.95x the bare model's decode speed; drift under the "
             "gate's limit):"]
    for m, name in (("gen", "reply names it"), ("mc", "multiple choice")):
        before = (after_one["days"].get(first_day) or {}).get(m) if after_one else None
        later = (now["days"].get(first_day) or {}).get(m)
        if before is not None and later is not None:
            ratio = f" ({later / before:.2f}x)" if before else ""
            lines.append(f"- night 1's recall probes, {name}: {pct(before)} after night 1, {pct(later)} after night "
                         f"{last}{ratio}")
    ratios = [(k, s["ratio"]) for k in scored
              if (s := result["units"].get(f"{arm}/{k}", {}).get("served")) and s.get("ratio") is not None]
    if ratios:
        lines.append(f"- the chat's decode against the bare model: {ratios[-1][1]:.2f}x after night {ratios[-1][0]} "
                     f"(lowest {min(r for _, r in ratios):.2f}x over {len(ratios)} nights)")
    drifts = [c["drift_kl"] for k in scored if (c := cell(result, arm, k)) and c["drift_kl"] is not None]
    limit = (result.get("config") or {}).get("gate", {}).get("max_drift")
    if drifts:
        lines.append(f"- general drift from the base (KL): {drifts[-1]:.4f} after night {last}, highest "
                     f"{max(drifts):.4f}" + (f"; the gate's limit for one night is {limit}" if limit else ""))
    return lines


def completeness(result: dict) -> str:
    done = sum(1 for u in result["units"].values() if "score" in u)
    total = nights(result) * len(result["bench"]["arms"])
    return f"{done} of {total} arm-nights scored{'' if done == total else ' (the run is not finished: --resume DIR)'}."


def markdown(result: dict) -> str:
    dreaming = dreaming_lines(result)
    retention = retention_lines(result) if nights(result) >= 5 else []
    dreaming += [*([""] if dreaming and retention else []), *retention]
    lines = ["# dreamer bench", "", *headline(result), "", *dreaming, *([""] if dreaming else []),
             machine_line(result), completeness(result), "",
             "## After the last night: does the reply name the fact (generation)", "",
             *kinds_table(result, "gen"), "", "## The same probes by multiple choice", "",
             *kinds_table(result, "mc"), "", "## Night by night (generation; controls by multiple choice)", "",
             *nights_table(result), "", "## Forgetting: each day's recall probes after each night (generation)", "",
             *forgetting_table(result), "", "## Day by day after the last night (generation)", "",
             *days_table(result), ""]
    if table := served_table(result):
        lines += ["## What the chat serves after each night (deep sleep)", "", *table, ""]
    if nights(result) >= 5 and (table := misses_table(result)):
        lines += ["## What the replies say instead of an earlier day's fact", "", *table, ""]
    if table := dreams_table(result):
        lines += ["## Dreaming, night by night", "", *table, "",
                  f"Dreams of night {last_scored(result, 'dream')}:", "",
                  *dream_examples(result, last_scored(result, "dream")), ""]
    return "\n".join(lines)


def plots(result: dict, folder: Path) -> list[Path]:
    """kinds.png (generation per kind per arm), forgetting.png (each day after each night), cost.png;
    served.png (the chat's decode speed per night) when the run measured it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    arms = result["bench"]["arms"]
    written = []
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        night = last_scored(result, arm)
        c = cell(result, arm, night) if night else None
        values = [(c["kinds"][k]["gen"] or 0) * 100 if c and k in c["kinds"] else 0 for k in KINDS]
        ax.bar([j + i * width for j in range(len(KINDS))], values, width, label=f"{arm} (night {night})")
    ax.set_xticks([j + width * (len(arms) - 1) / 2 for j in range(len(KINDS))], KINDS)
    ax.set_ylabel("reply names the fact (%)")
    ax.set_ylim(0, 100)
    ax.set_title("After each arm's last night, per probe kind")
    ax.legend(fontsize=8, ncol=3)
    written.append(_save(fig, folder / "kinds.png"))

    fig, axes = plt.subplots(1, len(arms), figsize=(2.6 * len(arms), 3), sharey=True, squeeze=False)
    for ax, arm in zip(axes[0], arms):
        for i, d in enumerate(result["days"]):
            points = [(k, c["days"][d["day"]]["gen"] * 100) for k in range(i + 1, nights(result) + 1)
                      if (c := cell(result, arm, k)) and d["day"] in c["days"] and c["days"][d["day"]]["gen"] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=f"day {i + 1}")
        ax.set_title(arm)
        ax.set_xlabel("after night")
        ax.set_ylim(0, 100)
        ax.set_xticks(range(1, nights(result) + 1))
    axes[0][0].set_ylabel("recall, reply names it (%)")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7)
    written.append(_save(fig, folder / "forgetting.png"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
    for arm in arms:
        points = [(k, c["wall_s"] / 60, c["peak_rss_mb"]) for k in range(1, nights(result) + 1)
                  if (c := cell(result, arm, k)) and c["wall_s"]]
        if points:
            left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=arm)
            right.plot([p[0] for p in points], [p[2] for p in points], marker="o", label=arm)
    left.set_title("wall time per night (min)")
    right.set_title("peak memory per night (MiB)")
    for ax in (left, right):
        ax.set_ylim(bottom=0)
        ax.set_xlabel("night")
        ax.set_xticks(range(1, nights(result) + 1))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    written.append(_save(fig, folder / "cost.png"))
    served = [(arm, k, s) for arm in arms for k in range(1, nights(result) + 1)
              if (s := result["units"].get(f"{arm}/{k}", {}).get("served")) and s.get("ratio") is not None]
    if served:  # deep sleep: does the chat slow down as the nights pile up
        fig, ax = plt.subplots(figsize=(5, 3))
        for arm in sorted({a for a, _, _ in served}):
            points = [(k, s["decode_tok_s"], s["bare_tok_s"]) for a, k, s in served if a == arm]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{arm}: served")
            ax.plot([p[0] for p in points], [p[2] for p in points], marker="x", linestyle=":", label=f"{arm}: bare")
        ax.set_title("chat decode, tok/s (one thread)")
        ax.set_xlabel("night")
        ax.set_xticks(range(1, nights(result) + 1))
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
        written.append(_save(fig, folder / "served.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})  # no version stamp: the same run, the same bytes
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
