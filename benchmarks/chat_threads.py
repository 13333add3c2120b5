"""How many llama.cpp threads the chat should use: decode speed by thread count, quiet and beside a sleep.

    .venv/bin/python -m benchmarks.chat_threads [--tokens 64] [--repeats 3] [--out benchmarks/results/chat_threads.json]

For each thread count from 1 to the number of cores, the embedded SmolLM2-135M-Instruct (Q4_1)
answers the same chat prompt, greedy, `--tokens` new tokens, `--repeats` times (the median is
kept): time to the first token and decode tokens per second after it. Two conditions:
- quiet: nothing else runs (the load average is recorded, since the machine may not be);
- beside a sleep: a second process trains like a night's distillation phase, a small torch
  model's forward and backward passes in a loop on the threads a sleep uses
  (`LoadConfig.threads` = 0: half the cores).
The chat's default (`n_threads = 0` in config.toml) is chosen from these numbers
(agent.llama_runtime.chat_threads).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import command_line, machine, write_record  # noqa: E402

PROMPT = [{"role": "system", "content": "You are dreamer, a personal assistant. Answer helpfully and briefly."},
          {"role": "user", "content": "Tell me about the history of Lisbon in a few sentences."}]


def _train_like_a_night(threads: int, stop) -> None:
    import torch

    torch.set_num_threads(threads)
    model = torch.nn.Sequential(torch.nn.Linear(576, 1536), torch.nn.SiLU(), torch.nn.Linear(1536, 576))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randn(4 * 128, 576)
    while not stop.is_set():
        loss = model(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def measure(runtime, tokens: int) -> tuple[float, float]:
    """(seconds to the first token, decode tokens/s after it) of one greedy reply."""
    runtime.llm.reset()
    started = time.perf_counter()
    first = None
    count = 0
    for chunk in runtime.llm.create_chat_completion(messages=PROMPT, stream=True, max_tokens=tokens, temperature=0.0):
        if chunk["choices"][0].get("delta", {}).get("content"):
            count += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return first - started, (count - 1) / (end - first) if count > 1 and end > first else 0.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-out/chat_threads.json"))
    args = parser.parse_args(argv)
    from agent.llama_runtime import LlamaRuntime, usable_cores
    from agent.models import embedded_gguf_path

    cores = usable_cores()  # as the chat and the night count them
    sleep_threads = max(1, cores // 2)
    rows = []
    for condition in ("quiet", "beside a sleep"):
        stop = multiprocessing.Event()
        worker = None
        if condition != "quiet":
            worker = multiprocessing.Process(target=_train_like_a_night, args=(sleep_threads, stop), daemon=True)
            worker.start()
            time.sleep(3)  # let it reach its loop
        load = os.getloadavg()[0]
        try:
            for threads in range(1, cores + 1):
                runtime = LlamaRuntime(embedded_gguf_path(), n_ctx=1024, n_threads=threads)
                measure(runtime, 8)  # warm-up
                runs = [measure(runtime, args.tokens) for _ in range(args.repeats)]
                row = {"condition": condition, "threads": threads,
                       "first_token_s": round(statistics.median(r[0] for r in runs), 3),
                       "decode_tok_s": round(statistics.median(r[1] for r in runs), 1), "load_before": round(load, 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                del runtime
        finally:
            stop.set()
            if worker is not None:
                worker.join(10)
    write_record(args.out, {"command": command_line("benchmarks.chat_threads", argv), "machine": machine(),
                            "sleep_threads": sleep_threads, "tokens": args.tokens, "repeats": args.repeats,
                            "rows": rows})
    return 0



if __name__ == "__main__":
    sys.exit(main())
