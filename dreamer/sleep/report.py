"""The morning report: what one night learned, in Markdown (stored with the run, printed), and
the process's memory that it reports."""

from __future__ import annotations

import resource
from pathlib import Path
from storage.words import count

# What tau was (DreamingConfig.reward_measure); a summary without one is from before "asked".
TAU_MEASURES = {"asked": "share of replies naming the answer", "choice": "right options' probability"}


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _cell(text: str, width: int = 80) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def morning_report(*, night: int | None, days: list[str], status: str, reasons: list[str], plan: str, preset: str,
                   counts: dict, gate: dict, probes: list[dict], training: dict, seconds: float,
                   peak_memory_mb: float, phases: dict | None = None, dreams: dict | None = None,
                   earlier_dreams: list[dict] | None = None) -> str:
    phases = phases or {}
    title = f"night {night}" if night else "no new night"
    lines = [
        f"# Morning report: {title} ({', '.join(days)})",
        "",
        f"**{status.upper()}**" + ("" if not reasons else ": " + "; ".join(reasons)),
        "",
        f"- preset `{preset}`, {plan}",
        f"- wall time {seconds / 60:.1f} min, peak memory {peak_memory_mb:.0f} MB"
        + (" (" + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()) + ")" if phases else ""),
        f"- from {count(counts.get('user_turns', 0), 'message')} of yours: {counts.get('questions_generated', 0)} questions "
        f"written by the teacher, {counts.get('questions_from_turns', 0)} built from your messages, "
        f"{counts.get('training_prompts', 0)} training prompts, {counts.get('probes', 0)} held-out probes",
        "",
        "## Gate",
        "",
        "| measure | active | candidate |",
        "|---|---|---|",
        f"| today's probes, closed book (n={gate.get('today_probes', 0)}) | {_pct(gate.get('today_before'))} | "
        f"{_pct(gate.get('today_after'))} |",
        f"| earlier nights' probes (n={gate.get('old_probes', 0)}) | {_pct(gate.get('old_before'))} | "
        f"{_pct(gate.get('old_after'))} |",
        *([f"| earlier facts named by the reply, as the chat asks (n={gate['old_replies_asked']}; reported, "
           f"not a rule) | {gate['old_replies_before']} | {gate['old_replies_after']} |"]
          if gate.get("old_replies_asked") else []),
        f"| general drift, KL(active ‖ candidate) | 0 | {gate.get('drift', 0):.4f} |",
        "",
    ]
    if probes:
        lines += ["## What was learned", "", "| question | told (teacher, with the day) | before | after |", "|---|---|---|---|"]
        before, after = gate.get("replies_before") or [], gate.get("replies_after") or []
        for i, probe in enumerate(probes):
            lines.append(
                f"| {_cell(probe['question'], 60)} | {_cell(probe['answer'])} | "
                f"{_cell(before[i] if i < len(before) else '')} | {_cell(after[i] if i < len(after) else '')} |"
            )
        lines.append("")
    if training:
        lines += [
            "## Training",
            "",
            f"- {training.get('steps')} steps in {training.get('seconds')} s; "
            f"{training.get('on_policy_samples')} on-policy and {training.get('teacher_samples')} teacher continuations",
            f"- divergence {training.get('divergence_first') or 0:.4f} (first steps) -> "
            f"{training.get('divergence_last') or 0:.4f} (last steps)",
            f"- imitation reward: mean {training.get('reward_mean') or 0:.3f}, last {training.get('reward_last') or 0:.3f}",
        ]
        for key, label in (("cloze_loss", "cloze recall loss"), ("drift", "drift term, KL on general text")):
            if training.get(f"{key}_first") is not None:
                lines.append(f"- {label} {training[f'{key}_first']:.4f} (first steps) -> {training[f'{key}_last']:.4f} (last steps)")
        lines.append("")
    if dreams is not None:
        lines += dreams_section(dreams, earlier_dreams or [])
    return "\n".join(lines)


def dreams_section(dreams: dict, earlier: list[dict]) -> list[str]:
    """What Dreaming did tonight: counts, the reward rate against earlier nights, examples."""
    kinds = ", ".join(f"{k} {v['written']}" for k, v in dreams["kinds"].items() if v["written"])
    grounded = f"{dreams['grounded']} grounded (the reply names a fact the request does not), " if "grounded" in dreams else ""
    if dreams.get("scorable") is not None and dreams["scorable"] < dreams.get("grounded", 0):
        grounded += f"{dreams['scorable']} of them about a fact with a held-out probe, "
    lines = ["## Dreams", "", f"- {dreams['written']} written ({kinds or 'none'}), {grounded}{dreams['kept']} kept by "
             f"the loss-gap filter, {dreams['rewarded']} rewarded"]
    if dreams.get("error"):
        lines.append(f"- **Dreaming did not finish: {dreams['error']}.** Tonight's expert is stage 1's alone.")
    elif not dreams["rewarded"]:
        lines.append("- No dream earned a reward: tonight's expert is stage 1's alone.")
    if dreams.get("reward_rate") is not None:
        measure = dreams.get("tau_measure", "choice")  # a rate is only comparable under the same tau
        shown = []
        for e in earlier[-5:]:
            other = e.get("tau_measure", "choice")
            shown.append(f"{e['day']} {_pct(e['reward_rate'])}" + ("" if other == measure else f" ({other})"))
        history = ", ".join(shown)
        probes = dreams["tau_probes"]
        lines.append(f"- reward rate {_pct(dreams['reward_rate'])}" + (f" (earlier nights: {history})" if history else "")
                     + f"; tau {dreams['tau_before']:.3f} before ({TAU_MEASURES[measure]}), "
                     f"on {probes['today']} of today's held-out probes "
                     f"and {probes['old']} of earlier nights'")
    writer = dreams.get("writer") or {}
    if writer.get("trained"):
        lines.append(f"- the writer learned from {writer['examples']} rewarded requests ({writer['steps']} steps, "
                     f"loss {writer['loss_first']:.3f} -> {writer['loss_last']:.3f})")
    elif writer:
        lines.append(f"- the writer did not learn: {writer.get('why')}")
    rehearsal = dreams.get("rehearsal") or {}
    if rehearsal.get("steps"):
        lines.append(f"- rehearsal: {rehearsal['steps']} steps, dream loss {rehearsal['loss_first']:.3f} -> "
                     f"{rehearsal['loss_last']:.3f}")
    for label in ("rewarded", "rejected"):
        shown = dreams["examples"][label]
        if shown:
            lines += ["", f"| {label} dream | kind | reply | tau change |", "|---|---|---|---|"]
            lines += [f"| {_cell(d['request'], 60)} | {d['kind']} | {_cell(d['reply'], 60)} | {d['tau_delta']:+.4f} |"
                      for d in shown]
    lines.append("")
    return lines


def process_memory_mb(field: str = "VmHWM") -> float:
    """This process's memory from /proc/self/status, MiB: `VmHWM` its own peak, `VmRSS` now.

    ru_maxrss (a peak) is only the fallback where /proc is missing: in a forked or spawned child
    it starts at the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return process_memory_mb("VmHWM")
