"""Smoke test of an installed wheel, run by .ci/run from outside the checkout.

    .ci-wheel-venv/bin/python .ci/smoke_wheel.py

`pip install .` used to give a dreamer that could not sleep: the wheel carried no presets and no
general texts. This checks, with nothing imported from the source tree: `dreamer --help`, that
the package and its data files come from site-packages, a dry run, a short real sleep on the
tests' tiny model (dreamer.bench.tiny, from the wheel), `dreamer memory`, and `dreamer eval` on
what the night wrote, and `dreamer bench --quick` (every arm on the tiny model, report and plots).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def run_cli(home: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dreamer", *args], capture_output=True, text=True, timeout=1200,
                            env={**os.environ, "DREAMER_HOME": str(home)})
    print(f"$ dreamer {' '.join(args)}  -> exit {result.returncode}")
    if result.returncode != 0:
        sys.exit(f"failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def main() -> None:
    import dreamer
    from dreamer.sleep.config import ASSETS, preset_names

    where = Path(dreamer.__file__).resolve()
    if (CHECKOUT / "dreamer") in where.parents or "site-packages" not in where.parts:
        sys.exit(f"dreamer was imported from {where}, not from the installed wheel")
    if "site-packages" not in ASSETS.parts or {"cpu-tiny", "gpu-qlora"} - set(preset_names()):
        sys.exit(f"the wheel's data files are missing: {ASSETS}, presets {preset_names()}")
    for name in ("general_prompts.jsonl", "general_heldout.jsonl", "bench_general.jsonl"):
        if not (ASSETS / name).is_file():
            sys.exit(f"the wheel has no {name}")

    with tempfile.TemporaryDirectory(prefix="dreamer-smoke-") as tmp:
        tmp = Path(tmp)
        from dreamer.bench.tiny import make_tiny_model_dir

        model = make_tiny_model_dir(tmp / "model")
        home = tmp / "home"
        home.mkdir()
        twin = model / "model.gguf"  # the tiny model's chat twin: deep sleep folds the night into it
        (home / "config.toml").write_text(f'train_model = "{model}"\nmodel = "{twin}"\n')
        day = tmp / "day.jsonl"
        day.write_text(json.dumps({"day": "2026-11-20", "messages": [
            {"role": "user", "content": "My sister Ana lives in Lisbon and works as a pilot."},
            {"role": "assistant", "content": "Lisbon is lovely."}]}) + "\n")
        preset = tmp / "smoke.toml"
        preset.write_text("[memories]\nquestions_per_conversation = 2\nmax_new_tokens = 8\nteacher_samples = 1\n"
                          "[distill]\nsteps = 2\nbatch_size = 2\nrl_new_tokens = 4\n[load]\nmax_seq_len = 128\n")

        assert "learns while it sleeps" in run_cli(home, "--help")
        run_cli(home, "import", str(day))
        assert "would consolidate 2026-11-20" in run_cli(home, "sleep", "--now", "--dry-run", "--preset", "cpu-tiny")
        night = run_cli(home, "sleep", "--now", "--preset", str(preset))
        if "promoted" not in night and "rejected by the gate" not in night:
            sys.exit(f"the night ended neither promoted nor rejected:\n{night[-2000:]}")
        run_cli(home, "memory")
        probes = tmp / "probes.jsonl"
        probes.write_text(json.dumps({"day": "2026-11-20", "question": "Where does Ana live?", "answer": "Lisbon",
                                      "distractors": ["Madrid", "Rome"]}) + "\n")
        assert "recall" in run_cli(home, "eval", "--probes", str(probes), "--no-generate")
        quick = run_cli(home, "bench", "--quick", "--out", str(tmp / "bench"))
        if "sleep ahead" not in quick or not (tmp / "bench" / "plots" / "kinds.png").is_file():
            sys.exit(f"dreamer bench --quick wrote no report or plots:\n{quick[-2000:]}")
    print("the installed wheel works")


if __name__ == "__main__":
    main()
