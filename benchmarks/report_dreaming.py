"""How Dreaming's studies read in docs/BENCHMARKS.md (benchmarks/report.py renders every block)."""

from __future__ import annotations

from benchmarks.markdown import machine_line as _machine
from benchmarks.markdown import table as _table


def render_dream_writing(record: dict) -> str:
    frames = {"whole_day": "whole day, teacher replies (before)", "one_turn": "one turn, writer replies (now)",
              "one_turn_teacher": "one turn, teacher replies"}
    rows, totals = [], {f: [0, 0, 0] for f in frames}
    for seed, result in record["seeds"].items():
        cells = []
        for frame in frames:
            r = result[frame]
            totals[frame] = [t + v for t, v in zip(totals[frame], (r["grounded"], r["on_a_fact"], r["written"]))]
            cells.append(f"{r['grounded']} / {r['on_a_fact']} / {r['written']}")
        rows.append([f"day of seed {seed}", *cells])
    rows.append(["**all**", *(f"**{g} / {f} / {w}**" for g, f, w in totals.values())])
    examples = [[d["kind"], d["request"].replace("|", "/"), d["reply"].replace("|", "/"), d["answer"]]
                for d in next(iter(record["seeds"].values()))["one_turn"]["examples"]]
    return "\n".join([f"`{record['command'].strip()}` ({_machine(record)}); {record['dreams']} dreams a day. "
                      "Each cell: grounded / grounded on a told fact / written.", "",
                      *_table(["day", *frames.values()], rows), "",
                      "Grounded dreams of the first day, as written now:", "",
                      *_table(["kind", "request", "reply", "grounded on"], examples)]) + "\n"


def render_dream_reward(record: dict) -> str:
    """benchmarks/dream_reward.py: each reward against what the user is asked, dream by dream."""
    from benchmarks.dream_reward import spearman

    names = {"tau": "tau, every held-out probe (was the default)", "tau_log": "the same, log-probability",
             "tau_fact": "tau, the dream's own fact's probes", "tau_fact_log": "the same, log-probability",
             "tau_other": "tau, the other facts' probes",
             "guarded": "its own fact's tau up and the other facts' not down", "gap": "the first filter's loss gap"}
    seeds = record["seeds"]
    lines = [f"`{record['command'].strip()}` ({_machine(record)}); {record['dreams']} dreams written a day, every "
             "grounded one scored. Per day: grounded dreams; held-out self-probes (the reward's) and the bench's "
             "recall and implication probes (the truth's, never seen by a night); mean right-option probability "
             "before; how many dreams raised the truth over all the day's probes / over the probes of the fact the "
             "dream names (with such a probe), under the current inner setting:", ""]
    first = record["inner"][0]
    lines += _table(["day", "grounded", "probes: held-out / truth", "before: held-out / truth",
                     "truth up / truth of its fact up"],
                    [[f"seed {seed}", r["grounded"], f"{r['held_probes']} / {r['truth_probes']}",
                      f"{r['before']['held']:.3f} / {r['before']['truth']:.3f}",
                      f"{r['settings'][first]['truth_up']} / {r['settings'][first]['truth_fact_up']}"]
                     for seed, r in seeds.items()])
    lines += ["", "Per inner setting (steps:learning rate) and reward, both days pooled: the dreams it rewards "
              "(change > 0) of those it can score; their mean truth change over all the day's probes (what "
              "rehearsing them does to what the user is asked) and over their own fact's probes; the Spearman "
              "correlation of the reward with each truth. The first row of a setting is every dream, unselected.", ""]
    rows = []
    for setting in record["inner"]:
        # "guarded": own fact up, and the other facts not down (both measured on the same copy)
        dreams = [{**m, "guarded": None if m["tau_fact"] is None else (m["tau_fact"] if m["tau_other"] >= 0 else -1.0)}
                  for r in seeds.values() for m in (d["settings"][setting] for d in r["dreams"])]
        for reward, label in [(None, "(every dream, no selection)"), *names.items()]:
            scored = dreams if reward is None else [d for d in dreams if d[reward] is not None]
            kept = scored if reward is None else [d for d in scored if d[reward] > 0]
            fact = [d["truth_fact"] for d in kept if d["truth_fact"] is not None]
            rho = [None if reward in (None, "guarded") else spearman([d[reward] for d in scored if d[t] is not None],
                                                        [d[t] for d in scored if d[t] is not None])
                   for t in ("truth", "truth_fact")]
            rows.append([setting, label, f"{len(kept)} / {len(scored)}",
                         f"{sum(d['truth'] for d in kept) / len(kept):+.4f}" if kept else "-",
                         f"{sum(fact) / len(fact):+.4f}" if fact else "-",
                         *("-" if v is None else f"{v:+.2f}" for v in rho)])
    lines += _table(["inner", "reward", "rewarded / scored", "truth change, all probes", "truth change, its fact",
                     "Spearman with truth", "with truth of its fact"], rows)
    return "\n".join(lines) + "\n"


def render_dream_reward_asked(record: dict) -> str:
    """benchmarks/dream_reward_asked.py: each reward against what the chat's replies then say, dream by dream."""
    from benchmarks.dream_reward_asked import REWARDS, summarise

    names = {"tau_fact": "tau on the dream's own fact, right option (was the default)",
             "asked_fact": "replies naming, its own fact's probes", "asked_all": "replies naming, every held-out probe (now)",
             "asked_lp_fact": "answer log-probability in the chat's voice, its own fact",
             "asked_lp_all": "the same, every held-out probe", "asked_lp_specific": "the same, its own fact less the others'",
             "on_topic": "the request names its turn's topic (no copy)"}
    seeds = record["seeds"]
    lines = [f"`{record['command'].strip()}` ({_machine(record)}); {record['dreams']} dreams written a day, every "
             "grounded one scored on a throwaway copy (inner setting as the presets). Per day: grounded dreams; "
             "before any copy, the reward's held-out probes (right options' mean probability; replies naming the "
             "answer, asked as the chat asks) and the bench's recall and implication probes (replies naming the "
             "fact; right options' mean probability); what a copy did to the bench's replies, unselected:", ""]
    lines += _table(["day", "grounded", "held-out: right option / replies naming", "bench: replies naming / right option",
                     "bench replies after a copy: more / fewer / mean change"],
                    [[f"seed {seed}", r["grounded"], f"{r['before']['tau']:.3f} / {r['before']['named']}",
                      f"{r['before']['gen']} / {r['before']['mc']:.3f}",
                      f"{r['summary']['gen']['up']} / {r['summary']['gen']['down']} / {r['summary']['gen']['mean']:+.2f}"]
                     for seed, r in seeds.items()])
    pooled = summarise([d for r in seeds.values() for d in r["dreams"]])
    lines += ["", "Per reward, both days pooled: the dreams it rewards (change > 0) of those it can score; their mean "
              "change in the bench's replies naming a fact (of 20 probes) and in right-option probability; the "
              "Spearman correlation of the reward with those two, and per day with the replies.", ""]
    rows = [["(every dream, no selection)", f"{pooled['dreams']} / {pooled['dreams']}", f"{pooled['gen']['mean']:+.2f}",
             f"{pooled['mc']['mean']:+.4f}", "-", "-", *("-" for _ in seeds)]]
    for reward in REWARDS:
        e = pooled[reward]
        per_seed = [summarise(r["dreams"])[reward]["spearman_gen"] for r in seeds.values()]
        rows.append([names[reward], f"{e['rewarded']} / {e['defined']}",
                     "-" if e["gen_if_rewarded"] is None else f"{e['gen_if_rewarded']:+.2f}",
                     "-" if e["mc_if_rewarded"] is None else f"{e['mc_if_rewarded']:+.4f}",
                     *("-" if v is None else f"{v:+.2f}" for v in (e["spearman_gen"], e["spearman_mc"], *per_seed))])
    lines += _table(["reward", "rewarded / scored", "replies naming, change", "right option, change",
                     "Spearman with replies", "with right option", *(f"with replies, seed {s}" for s in seeds)], rows)
    return "\n".join(lines) + "\n"


REHEARSAL_ARMS = {"none": "none (stage 1 alone)", "rewarded": "rewarded (what Dreaming rehearses)",
                  "rejected": "rejected by the reward", "kept": "every kept dream",
                  "rewarded_answer": "rewarded, the fact alone as the reply",
                  "answer_drift4": "the fact alone, drift term x4",
                  "answer_chat_drift": "the fact alone, drift term on chat turns",
                  "answer_self_drift": "the fact alone, drift held to stage 1's own answers",
                  "answer_self_drift4": "the fact alone, drift held to stage 1's own answers, x4"}


def render_dream_rehearsal(record: dict) -> str:
    """benchmarks/dream_rehearsal.py: the same stage-1 expert rehearsed on each arm's dreams, asked as the bench asks."""
    seeds = record["seeds"]
    runs = record.get("runs") or [record]
    lines = ["; ".join(f"`{r['command'].strip()}` ({_machine(r)})" for r in runs) + ". Per day: dreams written, "
             "grounded, scorable (a held-out probe of their own fact), kept by the filter, rewarded:", ""]
    lines += _table(["day", "written", "grounded", "scorable", "kept", "rewarded"],
                    [[f"seed {seed}", r["written"], r["grounded"], r["scorable"], len(r["dreams"]),
                      sum(d["rewarded"] for d in r["dreams"])] for seed, r in seeds.items()])
    lines += ["", "Each arm from the same stage-1 expert, one row per rehearsal seed; the day's bench probes asked "
              "the morning after under the chat's system prompt: the reply names the fact (recall, implication), "
              "multiple choice right, the right option's mean probability; the drift from the base on the gate's "
              "general text; tau over the held-out self-probes:", ""]
    rows = []
    for seed, r in seeds.items():
        for arm, label in REHEARSAL_ARMS.items():
            for run in r["arms"].get(arm, {}).get("runs", []):
                t, g = run["totals"], run.get("general_totals")
                rows.append([f"seed {seed}", label, r["arms"][arm]["dreams"], run["rehearsal"].get("steps", 0),
                             f"{t['recall']['gen']}/{t['recall']['n']}", f"{t['implication']['gen']}/{t['implication']['n']}",
                             f"{t['all']['mc']}/{t['all']['n']}", f"{t['all']['p']:.3f}",
                             f"{g['gen']}/{g['n']}, {g['mc']}/{g['n']}" if g else "-", f"{run['drift_kl']:.4f}",
                             f"{run['tau']:.3f}"])
    lines += _table(["day", "rehearsed", "#dreams", "#steps", "reply: recall", "reply: implication",
                     "multiple choice", "probability", "general: reply, choice", "drift KL", "tau"], rows)
    lines += ["", "Against `none` on the same day, every run of an arm on both days pooled (probe-runs: a probe "
              "asked after one run): the probes whose reply went from naming the fact to not, and back; the mean "
              "change of the right option's probability and of the drift:", ""]
    pooled, overlap = [], set(record.get("general_in_drift", []))
    for arm, label in list(REHEARSAL_ARMS.items())[1:]:
        lost = won = count = general_lost = general_won = general_count = 0
        unseen = [0, 0, 0]  # lost, found, asked: the general probes whose question no drift term trains on
        dp, dd = [], []
        for r in seeds.values():
            if arm not in r["arms"] or "none" not in r["arms"]:
                continue
            ref = r["arms"]["none"]["runs"][0]
            for run in r["arms"][arm]["runs"]:
                for a, b in zip(ref["probes"], run["probes"]):
                    lost += a["gen"] and not b["gen"]
                    won += b["gen"] and not a["gen"]
                    count += 1
                for i, (a, b) in enumerate(zip(ref.get("general", []), run.get("general", []))):
                    general_lost += a["gen"] and not b["gen"]
                    general_won += b["gen"] and not a["gen"]
                    general_count += 1
                    if i not in overlap:
                        unseen = [unseen[0] + (a["gen"] and not b["gen"]), unseen[1] + (b["gen"] and not a["gen"]),
                                  unseen[2] + 1]
                dp.append(run["totals"]["all"]["p"] - ref["totals"]["all"]["p"])
                dd.append(run["drift_kl"] - ref["drift_kl"])
        if count:
            general = f"{general_lost} / {general_won} of {general_count}" if general_count else "-"
            apart = f"{unseen[0]} / {unseen[1]} of {unseen[2]}" if unseen[2] and "general_in_drift" in record else "-"
            pooled.append([label, count, lost, won, general, apart, f"{sum(dp) / len(dp):+.3f}",
                           f"{sum(dd) / len(dd):+.4f}"])
    lines += _table(["rehearsed", "#probe-runs", "#reply lost the fact", "#reply found it",
                     "general: lost / found", "general, not a drift prompt", "probability change", "drift change"],
                    pooled)
    if "general_in_drift" in record:
        lines += ["", f"{len(overlap)} of the bench's 12 general questions are also among the 24 general prompts the "
                  "drift terms train on (assets/general_prompts.jsonl); the column before last leaves them out."]
    return "\n".join(lines) + "\n"


def render_night_cost(record: dict) -> str:
    """benchmarks/night_cost.py: the phases of each arm's nights side by side, then the scores as a paired night."""
    from dreamer.bench import report

    arms = record["bench"]["arms"]
    nights = sorted({int(unit.split("/")[1]) for a in arms for unit in record["arms"][a]["units"]})
    columns, phases, walls = [], {}, {}
    for arm in arms:
        for night in nights:
            train = record["arms"][arm]["units"].get(f"{arm}/{night}", {}).get("train")
            if not train:
                continue
            column = f"#{arm} night {night}, min"
            columns.append(column)
            walls[column] = train.get("wall_s")
            for phase, seconds in (train.get("phases") or {}).items():
                phases.setdefault(phase, {})[column] = seconds
    rows = [[phase, *(f"{by[c] / 60:.1f}" if c in by else "" for c in columns)] for phase, by in phases.items()]
    rows.append(["**the whole night**", *(f"**{walls[c] / 60:.1f}**" if walls[c] else "-" for c in columns)])
    def described(arm: str, run: dict) -> str:
        load = f", load average {min(run['loadavg']):.1f}-{max(run['loadavg']):.1f}" if run.get("loadavg") else ""
        started = ", ".join(f"{s['started']} with {s['jobs']} lane(s)" for s in run.get("sessions", []))
        return f"`{arm}` at {run['commit']} ({run['machine']['cpu']}{load}; started {started})"

    who = "; ".join(described(arm, run) for arm, run in record["arms"].items())
    merged = {"bench": record["bench"], "days": record["days"],
              "units": {k: v for run in record["arms"].values() for k, v in run["units"].items()}}
    lines = [f"`{record['command'].strip()}`: {record['change']}. Arms: {who}.", "",
             *_table(["phase", *columns], rows)]
    if len(walls) == 2 and all(walls.values()):
        (a, wa), (b, wb) = walls.items()
        lines += ["", f"{b.lstrip('#').removesuffix(', min')}: {wb / wa:.2f} of {a.lstrip('#').removesuffix(', min')}."]
    if record["config_keys_only_some_have"]:
        lines += ["", "Config keys only some arms' code has: " + ", ".join(f"`{k}`" for k in
                                                                        record["config_keys_only_some_have"]) + "."]
    if paired := report.dreaming_lines(merged):
        if len({run["commit"] for run in record["arms"].values()}) > 1:
            paired = ["The arms ran different code, so the differences below are Dreaming's and the code's together.",
                      "", *paired]
        lines += ["", *paired]
    lines += ["", *report.nights_table(merged)]
    return "\n".join(lines) + "\n"
