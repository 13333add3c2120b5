"""Chat speed of dreamer on this machine. Nothing is hard-coded: every number is measured here.

1. llama.cpp, dreamer's chat runtime: `agent.llama_runtime.LlamaRuntime` on the embedded
   SmolLM2-135M-Instruct Q4_1 GGUF, with dreamer's default n_ctx and n_threads (`Config()`).
   Each prompt is dreamer's system prompt + one user message; greedy (temperature 0), at most
   128 new tokens. TTFT = time from calling `stream` to the first non-empty text piece; decode
   speed = (tokens - 1) / (last piece - first piece). Tokens are counted as stream chunks
   (llama-cpp-python yields one per token, except when it holds back a partial UTF-8
   character); `count_tokens` of the joined reply is kept in the JSON as a cross-check.
   One warm-up reply first. The cache is reset before each prompt (`llm.reset()`) so the whole
   prompt is evaluated, as in transformers; in a live chat llama-cpp-python reuses the cached
   prefix (system prompt, earlier turns), so real TTFTs are lower.
2. transformers on the same GGUF, dequantized to float32 (load time reported on its own), the
   tokenizer's chat template, greedy, max_new_tokens 128, torch.set_num_threads(2). A streamer
   stamps each generated token; TTFT and decode speed as above, timed from before the chat
   template is applied (llama.cpp's `stream` also applies it). One warm-up reply first.
3. `python -m dreamer --help` and the venv's `dreamer` script, 5 subprocesses each;
   `python -c pass` likewise, as the interpreter's own share.
4. TUI start-up: `agent.tui.make_app(ChatSession(Store(empty temporary db), FakeRuntime(),
   Config()))`, from building the app until ChatScreen is the active screen and mounted, under
   Textual's headless `run_test`, 5 times in one process (modules already imported); and
   `python -c "import agent.tui"`, 5 subprocesses.

Median, min and max are printed as a Markdown table; the JSON holds every raw number.

    .venv/bin/python benchmarks/chat_speed.py [--out bench-out/chat_speed.json] [--skip-transformers] [--prompts N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain file from a checkout, installed or not

from storage import Config, Store  # noqa: E402

MAX_TOKENS = 128
RUNS = 5  # repetitions of the subprocess and TUI measurements
USER_PROMPTS = [
    "What is the capital of France, and what is it famous for?",
    "Explain in simple words how a bicycle stays upright.",
    "Write a short poem about the sea at night.",
    "Give me three tips to sleep better.",
    "I have eggs, flour and milk. What can I cook for breakfast?",
    "What is the difference between weather and climate?",
    "Summarize the plot of Little Red Riding Hood in three sentences.",
]


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def chat(user: str, config: Config) -> list[dict]:
    return [{"role": "system", "content": config.system_prompt}, {"role": "user", "content": user}]


def measure(times: list[float], recount: int, reply: str) -> dict:
    """One reply, from the arrival time (s since the request) of each generated token."""
    n = len(times)
    decode = (n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else None
    return {"ttft_s": times[0] if times else None, "tokens": n, "tokens_recount": recount,
            "decode_tok_s": decode, "total_s": times[-1] if times else None, "reply": reply}


def aggregate(runs: list[dict]) -> dict:
    return {key: summary([r[key] for r in runs if r[key] is not None]) for key in ("ttft_s", "decode_tok_s", "tokens")}


def bench_llama(prompts: list[str], config: Config) -> dict:
    from agent.llama_runtime import LlamaRuntime
    from agent.models import EMBEDDED_NAME, embedded_gguf_path

    start = time.perf_counter()
    runtime = LlamaRuntime(embedded_gguf_path(), name=EMBEDDED_NAME, n_ctx=config.n_ctx, n_threads=config.n_threads)
    load_s = time.perf_counter() - start

    def one(user: str) -> dict:
        runtime.llm.reset()  # forget the previous prompt, so no prefix of it is reused
        times, pieces = [], []
        start = time.perf_counter()
        for piece in runtime.stream(chat(user, config), max_tokens=MAX_TOKENS, temperature=0.0):
            times.append(time.perf_counter() - start)
            pieces.append(piece)
        reply = "".join(pieces)
        return measure(times, runtime.count_tokens(reply), reply)

    one(prompts[0])  # warm-up: first-call allocations, weights paged in
    runs = [one(p) for p in prompts]
    params = runtime.llm.context_params
    runtime.llm.close()
    return {"load_s": load_s, "n_threads": params.n_threads, "n_threads_batch": params.n_threads_batch,
            "n_ctx": config.n_ctx, "token_count": "stream chunks", "runs": runs, **aggregate(runs)}


def bench_transformers(prompts: list[str], config: Config) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    from agent.models import embedded_gguf_path
    from dreamer.lm.chat_tokenizer import align_generation, fix_end_of_turn

    torch.set_num_threads(2)
    path = embedded_gguf_path()
    start = time.perf_counter()
    # The end of turn from the chat template: some transformers versions read this GGUF's eos wrong.
    tokenizer = fix_end_of_turn(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))
    # `dtype` is transformers 5's name for the deprecated `torch_dtype`.
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    align_generation(model, tokenizer)
    load_s = time.perf_counter() - start

    class Clock(BaseStreamer):
        """generate() puts the prompt once, then each new token: stamp the tokens."""

        def __init__(self, start: float) -> None:
            self.start, self.times, self.prompt_seen = start, [], False

        def put(self, value) -> None:
            if self.prompt_seen:
                self.times.append(time.perf_counter() - self.start)
            self.prompt_seen = True

        def end(self) -> None:
            pass

    def one(user: str) -> dict:
        start = time.perf_counter()
        inputs = tokenizer.apply_chat_template(chat(user, config), add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        clock = Clock(start)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False, streamer=clock,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[0, inputs["input_ids"].shape[1]:]
        return measure(clock.times, len(new), tokenizer.decode(new, skip_special_tokens=True))

    one(prompts[0])  # warm-up
    runs = [one(p) for p in prompts]
    return {"load_s": load_s, "torch_threads": torch.get_num_threads(), "dtype": "float32",
            "token_count": "streamer steps", "runs": runs, **aggregate(runs)}


def wall(cmd: list[str], env: dict) -> dict:
    """Wall time of `cmd` in a fresh process, RUNS times."""
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode:
            raise SystemExit(f"{cmd} failed ({done.returncode}): {done.stderr.strip()}")
    return summary(times) | {"cmd": cmd, "runs": times}


def bench_tui(tmp: Path) -> dict:
    from agent.runtime import FakeRuntime
    from agent.session import ChatSession
    from agent.tui import ChatScreen, make_app

    async def once(i: int) -> float:
        store = Store(tmp / f"tui{i}.db")
        store.set_state("first_run_seen", "benchmark")  # the first-run card would cover the chat
        session = ChatSession(store, FakeRuntime(), Config())
        session.resume_latest()  # as `dreamer chat` does before it starts the UI
        start = time.perf_counter()
        app = make_app(session)
        async with app.run_test() as pilot:
            await pilot.pause()
            # Ready = ChatScreen is the active screen and its on_mount (history, focus) has run.
            deadline = time.perf_counter() + 30
            while not (isinstance(app.screen, ChatScreen) and app.screen.is_mounted):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"the chat screen did not come up (the screen is {app.screen!r})")
                await pilot.pause()
            elapsed = time.perf_counter() - start
        store.close()
        return elapsed

    times = [asyncio.run(once(i)) for i in range(RUNS)]
    return summary(times) | {"runs": times}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    versions = {}
    for package in ("torch", "transformers", "llama-cpp-python", "textual"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(), **versions}


def table(r: dict) -> str:
    rows = [("Measurement", "median", "min", "max", "unit"), ("---",) * 5]

    def row(label: str, s: dict, unit: str, fmt: str = "{:.3f}") -> None:
        rows.append((label, fmt.format(s["median"]), fmt.format(s["min"]), fmt.format(s["max"]), unit))

    for key, name in (("llama_cpp", "llama.cpp (LlamaRuntime)"), ("transformers", "transformers fp32")):
        if key in r:
            b = r[key]
            rows.append((f"{name}: load", f"{b['load_s']:.2f}", "", "", "s (once)"))
            row(f"{name}: TTFT", b["ttft_s"], "s")
            row(f"{name}: decode", b["decode_tok_s"], "tokens/s", "{:.1f}")
            row(f"{name}: tokens per reply", b["tokens"], "tokens", "{:.0f}")
    cli = r["cli"]
    row("`python -c pass` (interpreter alone)", cli["python_startup"], "s")
    row("`python -m dreamer --help`", cli["module_help"], "s")
    if "script_help" in cli:
        row("`dreamer --help`", cli["script_help"], "s")
    row('`python -c "import agent.tui"`', cli["import_tui"], "s")
    row("TUI start-up to ChatScreen (FakeRuntime)", r["tui"], "s")
    m, llama = r["machine"], r.get("llama_cpp", {})
    return "\n".join("| " + " | ".join(cells) + " |" for cells in rows) + (
        f"\n\nMachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}, transformers "
        f"{m['transformers']}, llama-cpp-python {m['llama-cpp-python']}, textual {m['textual']}. "
        f"{len(r['prompts'])} prompts, greedy, at most {MAX_TOKENS} new tokens; llama.cpp threads "
        f"{llama.get('n_threads')} (batch {llama.get('n_threads_batch')}), torch threads "
        f"{r.get('transformers', {}).get('torch_threads', '-')}. Load average before/after: "
        f"{r['loadavg'][0][0]:.2f}/{r['loadavg'][1][0]:.2f}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "chat_speed.json")
    parser.add_argument("--skip-transformers", action="store_true", help="skip the dequantized transformers run")
    parser.add_argument("--prompts", type=int, default=5, help=f"how many prompts, 1 to {len(USER_PROMPTS)}")
    args = parser.parse_args()
    prompts = USER_PROMPTS[: max(1, min(args.prompts, len(USER_PROMPTS)))]
    config = Config()
    # Other work on the machine skews every number: keep the 1-minute load average with them.
    result = {"machine": machine(), "prompts": prompts, "max_tokens": MAX_TOKENS, "loadavg": [os.getloadavg()]}

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DREAMER_HOME"] = str(Path(tmp) / "home")  # never touch the user's own data
        env = dict(os.environ)
        print("CLI and import start-up ...", file=sys.stderr)
        result["cli"] = {"python_startup": wall([sys.executable, "-c", "pass"], env),
                         "module_help": wall([sys.executable, "-m", "dreamer", "--help"], env),
                         "import_tui": wall([sys.executable, "-c", "import agent.tui"], env)}
        script = Path(sys.executable).parent / "dreamer"  # this venv's console script
        if script.exists():
            result["cli"]["script_help"] = wall([str(script), "--help"], env)
        print("TUI start-up ...", file=sys.stderr)
        result["tui"] = bench_tui(Path(tmp))
        print("llama.cpp ...", file=sys.stderr)
        result["llama_cpp"] = bench_llama(prompts, config)
        gc.collect()  # free the llama.cpp model before transformers builds its own copy
        if not args.skip_transformers:
            print("transformers (dequantizing the GGUF) ...", file=sys.stderr)
            result["transformers"] = bench_transformers(prompts, config)

    result["loadavg"].append(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"\nraw numbers: {args.out}")


if __name__ == "__main__":
    main()
