"""How long a night will take and how much memory it will hold, for `dreamer sleep --now --dry-run`.

From this home's own finished nights of the same preset (this machine, this model): a night is a
fixed part (loading, the teacher's memories, the gate, saving; the median of the last nights) and
the distillation, which is `steps` optimizer steps of a measured cost (the median seconds per step
of those nights). Peak memory is the highest any of them reached: the next night's depends on the
day's length and on how many experts it trains through, so the estimate says "about".

A home with no night of this preset yet gets the reference night measured on the embedded model
(docs/BENCHMARKS.md, "Months of nights"), named as such, or no estimate for another model:
a number measured on a different machine or model would be a guess.
"""

from __future__ import annotations

import statistics

from storage import Store, ledger

DISTILL_PHASE = "distil into a new expert"
# The 14-night run's first five nights (benchmarks/results/bench_long.json): cpu-tiny on the embedded
# SmolLM2-135M, a 2-core Intel Xeon, one training thread, beside one other benchmark.
REFERENCE = {"cpu-tiny": {"fixed_s": 100.0, "step_s": 13.3, "peak_mb": 3030.0, "parameters": 134_515_008,
                          "where": "the reference 2-core Intel Xeon (no night of this preset has run in this home yet)"}}


def model_identity(config) -> str:
    """The model a night trains: its configured files (the embedded model when none); each night
    records it, so an estimate learns only from nights of the same model."""
    return f"{config.model or 'embedded'}|{config.train_model}"


def measured(store: Store, preset: str, model: str | None = None, limit: int = 5) -> list[dict]:
    """The newest finished nights of `preset` on `model` (`model_identity`; nights
    from before it was recorded count) that recorded their phases and steps, newest last."""
    runs = [r for r in ledger.finished_runs(store) if r["status"] in ("promoted", "rejected") and r["preset"] == preset
            and (model is None or r["metrics"].get("model", model) == model)]
    usable = [r["metrics"] for r in runs
              if r["metrics"].get("phase_seconds", {}).get(DISTILL_PHASE) and r["metrics"].get("training", {}).get("steps")]
    return usable[-limit:]


def estimate_night(store: Store, preset: str, steps: int, config) -> str:
    """One phrase: "about 26 min and 3.0 GB peak (from the last 3 nights here)", or why there is none."""
    nights = measured(store, preset, model_identity(config))
    embedded_model = not config.model and not config.train_model
    if nights:
        step_s = statistics.median(m["phase_seconds"][DISTILL_PHASE] / m["training"]["steps"] for m in nights)
        fixed_s = statistics.median(m["seconds"] - m["phase_seconds"][DISTILL_PHASE] for m in nights)
        peak_mb = max(m.get("peak_memory_mb", 0.0) for m in nights)
        where = f"from the last {len(nights)} night{'s' if len(nights) > 1 else ''} of {preset} in this home"
    elif embedded_model and preset in REFERENCE:
        ref = REFERENCE[preset]
        step_s, fixed_s, peak_mb, where = ref["step_s"], ref["fixed_s"], ref["peak_mb"], ref["where"]
    else:
        return f"no time estimate yet: no night of {preset} has run in this home on this model"
    minutes = (fixed_s + step_s * steps) / 60
    return f"about {minutes:.0f} min and {peak_mb / 1024:.1f} GB peak memory ({where})"
