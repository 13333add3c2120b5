"""Dreaming as one stage of the night, between stage 1 (distil) and the gate.

    1. write     the writer writes `dreams` requests with their replies, one fact (user turn) at a
                 time, and the stack re-tells earlier nights; only grounded dreams (the reply names
                 a fact of the night the request does not) go on (write.py)
    2. score     of the dreams tau can measure (with `reward_probes = "own"`: those whose fact has a
                 held-out probe), the loss-gap filter keeps `keep` + `keep_random`; each kept dream
                 trains a throwaway copy of tonight's expert and is rewarded if tau rises (with
                 `reward_measure = "asked"`: more held-out probes' replies name their answer) (score.py)
    3. writer    ReST-EM: the writer learns from its rewarded requests (writer.py)
    4. rehearse  tonight's expert trains on the rewarded dreams, drift term on (rehearse.py)

The self-probes tau is measured on are held out: at most half of today's probes (up to
`tau_today`, one per fact before any fact gives two), which the gate then does not use, plus up
to `tau_old` earlier nights' probes (the gate's old-memory check keeps all of those: they are
guarded, not selected on; with `reward_probes = "own"` the rehearsals re-tell these).

Dreaming can only add. If it raises (anything but an interrupt), tonight's expert is put back
exactly as stage 1 left it, the writer is dropped unsaved, and the morning report says why; a
night whose dreams earn no reward is stage 1 alone, and says so. `enabled = false` skips this
stage without drawing a random number, so the night is stage 1's, bit for bit.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dreamer.sleep.config import SleepConfig
from dreamer.sleep.dreaming.rehearse import rehearsal_steps, rehearse
from dreamer.sleep.dreaming.score import (
    expert_state, first_filter, loss_gaps, measured_probes, restore_state, reward_dreams,
)
from dreamer.sleep.dreaming.write import KINDS, Dream, probe_sentence, write_dreams
from dreamer.sleep.dreaming.writer import attach_writer, detach_writer, train_writer

log = logging.getLogger(__name__)
EXAMPLES = 3  # rewarded and rejected dreams shown in the morning report


@dataclass
class DreamResult:
    written: list[Dream] = field(default_factory=list)
    grounded: list[Dream] = field(default_factory=list)
    scorable: list[Dream] = field(default_factory=list)  # grounded, with held-out probes to measure it on
    kept: list[Dream] = field(default_factory=list)
    tau_today: list[dict] = field(default_factory=list)
    tau_old: list[dict] = field(default_factory=list)
    tau_before: float | None = None
    tau_measure: str = "asked"  # DreamingConfig.reward_measure
    writer_from: str | None = None
    writer: dict = field(default_factory=dict)
    rehearsal: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    @property
    def rewarded(self) -> list[Dream]:
        return [d for d in self.kept if d.rewarded]

    @property
    def writer_learned(self) -> bool:
        return bool(self.writer.get("trained")) and self.error is None

    def summary(self) -> dict:
        kinds = {}
        for kind in [*KINDS, "rehearsal"]:
            kinds[kind] = {"written": sum(d.kind == kind for d in self.written),
                           "grounded": sum(d.kind == kind for d in self.grounded),
                           "kept": sum(d.kind == kind for d in self.kept),
                           "rewarded": sum(d.kind == kind for d in self.rewarded)}
        rejected = sorted((d for d in self.kept if not d.rewarded and d.tau_delta is not None), key=lambda d: d.tau_delta)
        best = sorted(self.rewarded, key=lambda d: d.tau_delta, reverse=True)
        return {
            "written": len(self.written), "grounded": len(self.grounded), "scorable": len(self.scorable),
            "kept": len(self.kept),
            "rewarded": len(self.rewarded),
            "reward_rate": len(self.rewarded) / len(self.kept) if self.kept and self.error is None else None,
            "kinds": kinds, "tau_probes": {"today": len(self.tau_today), "old": len(self.tau_old)},
            "tau_before": self.tau_before, "tau_measure": self.tau_measure, "writer_from": self.writer_from,
            "writer": self.writer,
            "rehearsal": self.rehearsal, "error": self.error, "seconds": round(self.seconds, 1),
            "examples": {"rewarded": [d.shown() for d in best[:EXAMPLES]],
                         "rejected": [d.shown() for d in rejected[:EXAMPLES]]},
        }


def split_probes(probes: list[dict], wanted: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(held out for tau, left for the gate): at most half of today's probes go to tau, one per
    fact (sentence) before any fact gives a second, so that as many facts as can be have a
    held-out probe for their own dreams' reward.

    >>> probes = [p for k in range(4) for p in ({"question": f'"___ lives in Oslo{k}."', "answer": f"Ana{k}"},
    ...                                         {"question": f'"Ana{k} lives in ___."', "answer": f"Oslo{k}"})]
    >>> held, gate = split_probes(probes, 12, random.Random(0))
    >>> len(held), len({probe_sentence(p) for p in held}), len(held + gate)
    (4, 4, 8)
    """
    count = min(wanted, len(probes) // 2)
    facts: dict[str, list[int]] = {}
    for i, probe in enumerate(probes):
        facts.setdefault(probe_sentence(probe), []).append(i)
    queues = [rng.sample(indices, len(indices)) for indices in facts.values()]
    rng.shuffle(queues)
    chosen: list[int] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    held = set(chosen)
    return [p for i, p in enumerate(probes) if i in held], [p for i, p in enumerate(probes) if i not in held]


def dream(model, tokenizer, *, conversations: list[dict], base_system: str, stack: list[str], experts: list[Path],
          tau_today: list[dict], old_probes: list[dict], general_texts: list[str], cfg: SleepConfig,
          rng: random.Random, begin: Callable[[str, int | None], Callable],
          general_turns: list[tuple[str, str]] = ()) -> DreamResult:
    """Run steps 1-4 on the stage-1 expert in `model`; `begin(phase, total)` opens a progress phase.
    `general_texts` and `general_turns` (question, the bare base's answer) feed the rehearsal's drift term."""
    dcfg = cfg.dreaming
    result = DreamResult(tau_today=tau_today, tau_old=rng.sample(old_probes, min(dcfg.tau_old, len(old_probes))),
                         tau_measure=dcfg.reward_measure)
    started = time.monotonic()
    stage1 = expert_state(model)
    try:
        advance = begin("dream: write", 1)
        writer_from = attach_writer(model, experts, dcfg, cfg.distill)
        result.writer_from = str(writer_from) if writer_from else None
        # With rewards on a dream's own probes, a rehearsal re-tells one of the earlier probes tau holds.
        retold = result.tau_old if dcfg.reward_probes == "own" else old_probes
        result.written = write_dreams(model, tokenizer, conversations=conversations, base_system=base_system,
                                      stack=stack, old_probes=retold, cfg=dcfg, rng=rng)
        advance()
        result.grounded = [d for d in result.written if d.answer]
        probes = result.tau_today + result.tau_old
        result.scorable = [d for d in result.grounded if measured_probes(d, probes, dcfg)]
        if not probes:
            result.error = "no held-out probes to score dreams on"
        elif not result.written:
            result.error = "no dreams were written"
        elif not result.grounded:
            result.error = (f"none of the {len(result.written)} dreams was grounded "
                            "(a reply naming a fact of the night that its request did not)")
        elif not result.scorable:
            result.error = f"none of the {len(result.grounded)} grounded dreams is about a fact with a held-out probe"
        if result.error:
            return result
        loss_gaps(model, tokenizer, result.scorable, stack, base_system)
        result.kept = first_filter(result.scorable, dcfg, rng)
        advance = begin("dream: score", len(result.kept))
        result.tau_before = reward_dreams(model, tokenizer, result.kept, probes, stack, base_system, dcfg, advance)
        advance = begin("dream: learn to dream", 1)
        result.writer = train_writer(model, tokenizer, result.rewarded, stack, dcfg, rng)
        advance()
        advance = begin("dream: rehearse", rehearsal_steps(len(result.rewarded), dcfg))
        result.rehearsal = rehearse(model, tokenizer, result.rewarded, stack=stack, system=base_system,
                                    general_texts=general_texts,
                                    drift_weight=cfg.distill.drift_weight * dcfg.rehearse_drift_scale,
                                    drift_batch=cfg.distill.drift_batch, max_len=cfg.load.max_seq_len, cfg=dcfg,
                                    rng=rng, general_turns=general_turns, progress=advance)
    except Exception as err:  # Dreaming can only add: stage 1's expert stands, and the report says why
        log.exception("Dreaming failed; the night goes on with stage 1's expert")
        restore_state(model, stage1)
        detach_writer(model)
        result.error = f"{type(err).__name__}: {err}"
    finally:
        result.seconds = time.monotonic() - started
    return result
