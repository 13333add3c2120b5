"""How `fold_type = "grid"`'s MIN_STEP was chosen: the grid fold at each threshold, on one home.

    python -m benchmarks.grid_threshold --home HOME [--steps 0,0.02,...] [--bench RUN/bench.json]

dreamer.morning.grid_fold moves a weight's 4-bit level at random in proportion to the nights'
change c (in grid steps), only where |c| >= MIN_STEP. For each threshold here (0: plain
stochastic rounding, every weight), the fold of HOME's active experts and the mean per-token
KL from what the nights trained (transformers, float32, the base plus the experts), on general
text (assets/general_heldout.jsonl, its 12 texts) and on the home's own probes written as "question
answer" (48: the nights' facts); with `--bench`, the bench's recall, implication and general
probes asked as the chat asks through each fold (benchmarks.fold_quality.ask_bench_probes) for
the thresholds in `--replies`. The threshold is chosen here, on one home; it is judged on
another run's nights by benchmarks.fold_nights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from benchmarks.machine import command_line, git_commit, machine, write_record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--steps", default="0,0.02,0.03,0.04,0.05,0.07,0.1")
    parser.add_argument("--bench", type=Path)
    parser.add_argument("--replies", default="0,0.05,0.1", help="thresholds whose replies are asked (with --bench)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "grid_threshold.json")
    args = parser.parse_args(argv)

    import torch

    from agent.llama_runtime import LlamaRuntime
    from agent.models import embedded_gguf_path
    from benchmarks.fold_quality import ask_bench_probes, hf_logits, kl, llama_logits
    from dreamer.lm.weights import build_stack, load_base, plan_device, training_source
    from dreamer.morning.fold import expert_change, fold
    from dreamer.morning.grid_fold import grid_tensor
    from dreamer.sleep.config import LoadConfig
    from dreamer.sleep.gate import general_texts
    from storage import Store
    from storage.manifest import read_manifest
    from storage.paths import cache_dir

    torch.set_num_threads(1)
    record = {"command": command_line("benchmarks.grid_threshold", argv), "machine": machine(load=True),
              "commit": git_commit()}
    experts = read_manifest(args.home)["experts"]
    scaled = [(Path(e["path"]), float(e["scale"])) for e in experts]
    base, _ = load_base(training_source("", cache_dir(args.home)), plan_device(LoadConfig(device="cpu", threads=1)))
    stack = build_stack(base, [Path(e["path"]) for e in experts], None)
    store = Store(args.home / "dreamer.db")
    steps = [float(x) for x in args.steps.split(",") if x]

    def at(threshold: float):
        return lambda tensor, parts: grid_tensor(tensor, expert_change(parts), threshold)

    work = Path(tempfile.mkdtemp(prefix="grid-threshold-"))
    try:
        runtimes = {step: LlamaRuntime(fold(embedded_gguf_path(), scaled, work / f"{step}.gguf", "grid",
                                            requantize=at(step)).path, n_ctx=1024, n_threads=1, logits_all=True)
                    for step in steps}
        probes = [f"{r['question']} {r['answer']}" for r in store.db.query("select question, answer from probes")]
        texts = {"general": general_texts()[:24], "probes": probes[:48]}
        tokenize = runtimes[steps[0]].llm.tokenize
        sums = {step: {kind: [0.0, 0] for kind in texts} for step in steps}
        for kind, items in texts.items():
            for text in items:
                ids = tokenize(text.encode(), add_bos=False, special=False)[:256]
                reference = hf_logits(stack, ids)
                for step, runtime in runtimes.items():
                    total, count = kl(reference, llama_logits(runtime, ids))
                    sums[step][kind][0] += total
                    sums[step][kind][1] += count
        record["kl_to_trained"] = {str(step): {kind: round(t / n, 5) for kind, (t, n) in per.items()}
                                   for step, per in sums.items()}
        if args.bench:
            asked = [float(x) for x in args.replies.split(",") if x]
            replies = ask_bench_probes(args.bench, store, {str(s): runtimes[s] for s in steps if s in asked})
            record["replies"] = replies
        for runtime in runtimes.values():
            runtime.llm.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record["experts"], record["texts"] = len(experts), {kind: len(items) for kind, items in texts.items()}
    write_record(args.out, record)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
