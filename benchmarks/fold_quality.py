"""Deep sleep's cost and fidelity: the active stack folded into the chat's GGUF, per quantization type.

    python -m benchmarks.fold_quality --home HOME [--bench RUN/bench.json] [--out benchmarks/results/fold_quality.json]

HOME is a dreamer home with promoted experts (e.g. a `dreamer bench` arm's home). What is measured:
1. Fidelity. The reference is what the night trained: transformers, float32, the base plus the
   active experts. On plain text (assets/general_heldout.jsonl) and on the home's probes written
   as "question answer" (the nights' facts), the mean per-token KL(reference || served) for
   each way llama.cpp can serve the memory: the base GGUF with the experts as LoRA adapters
   (today's chat), and the base with the experts folded in at Q4_1, Q5_1, Q8_0 and F16, and on
   the base's own Q4_1 grid: `grid` (dreamer.morning.grid_fold) and benchmarks.fold_grid's two
   roundings (plain stochastic; calibrated by error feedback on the home's conversations and the
   general prompts). Beside them
   the llama.cpp base with no memory (how far the nights moved the model, as llama.cpp sees it)
   and transformers' float32 base (the same, without llama.cpp's quantization).
2. Decode speed. `LlamaRuntime` with one thread, greedy, 64 tokens on 3 prompts, in rounds that
   alternate the conditions: the bare base, the base with the experts as adapters, the same
   function spread over 14 adapters (each expert's GGUF applied 7 times at scale 1/7, as a stack
   of 14 nights costs), and each folded model.
3. Folding: seconds and bytes per type; the chat's swap (`LlamaRuntime.load_model`, base to
   the Q8_0 fold and back, n_ctx 4096 as the chat opens it).
4. Replies (`--bench`): the bench run's recall and implication probes of the days HOME learned,
   asked as the chat asks through each llama.cpp condition; does the greedy reply name the fact.
5. Part folds (`--shares`): only the tensors the stack moves most, relative to their own size
   (RMS of the change over RMS of the weight), folded at Q8_0 up to that share of the changed
   weights; the other changed tensors keep the base's Q4_1 bytes and lose their change. The
   question they answer: how much memory does it cost to buy back the Q8_0 fold's decode speed?
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import command_line, git_commit, machine, write_record

PROMPTS = ["What is the capital of France, and what is it famous for?",
           "Give me three tips to sleep better.", "Explain in simple words how a bicycle stays upright."]
TYPES = ("Q4_1", "Q5_1", "Q8_0", "F16", "grid", "Q4_1-stochastic", "Q4_1-calibrated")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl(reference: np.ndarray, served: np.ndarray) -> tuple[float, int]:
    """(summed per-token KL(reference || served), positions) of one text's logits."""
    p, q = log_softmax(reference), log_softmax(served)
    return float((np.exp(p) * (p - q)).sum()), p.shape[0]


def llama_logits(runtime, tokens: list[int]) -> np.ndarray:
    runtime.llm.reset()
    runtime._reset_cache()
    runtime.llm.eval(tokens)
    return np.array(runtime.llm.scores[: len(tokens)], dtype=np.float64)


def hf_logits(model, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0].double().numpy()


def ranked_tensors(model_path: Path, experts: list[tuple[Path, float]]) -> list[tuple[str, int, float]]:
    """(tensor, weights, RMS of the stack's change / RMS of the weight) for each tensor the experts
    change, the most moved first."""
    import gguf

    from dreamer.morning.fold import expert_change, expert_deltas

    reader = gguf.GGUFReader(str(model_path))
    by_name = {t.name: t for t in reader.tensors}
    rows = []
    for name, parts in expert_deltas(experts).items():
        tensor = by_name[name]
        weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        change = expert_change(parts)
        rows.append((name, weight.size, float(np.sqrt((change ** 2).mean() / (weight ** 2).mean()))))
    return sorted(rows, key=lambda row: -row[2])


def share_of(ranked: list[tuple[str, int, float]], share: float) -> set[str]:
    """The most-moved tensors, in order, while their weights stay within `share` of all changed weights."""
    total, used, chosen = sum(n for _, n, _ in ranked), 0, set()
    for name, size, _ in ranked:
        if used + size <= share * total:
            chosen.add(name)
            used += size
    return chosen


def calibration_tokens(store, source: str) -> list[list[int]]:
    """What the calibrated fold is fitted on (none of it is measured here): each stored
    conversation through the chat template under the chat's system prompt (the days the nights
    learned, as the chat shows them), and each general prompt as a one-turn chat; 512 tokens at most."""
    from datetime import date

    from transformers import AutoTokenizer

    from agent.memory import system_message
    from dreamer.sleep.config import ASSETS
    from storage.config import Config

    tokenizer = AutoTokenizer.from_pretrained(source)
    chats: dict[int, list[dict]] = {}
    for row in store.db.query("select conversation_id, role, content, day from messages order by id"):
        if row["conversation_id"] not in chats:  # the system prompt of the conversation's first day
            chats[row["conversation_id"]] = [{"role": "system",
                                              "content": system_message(Config(), date.fromisoformat(row["day"]))}]
        chats[row["conversation_id"]].append({"role": row["role"], "content": row["content"]})
    system = system_message(Config(), date.today())
    for line in (ASSETS / "general_prompts.jsonl").read_text().splitlines():
        if line:
            chats[-len(chats) - 1] = [{"role": "system", "content": system},
                                      {"role": "user", "content": json.loads(line)["prompt"]}]
    texts = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats.values()]
    return [tokenizer(text, add_special_tokens=False)["input_ids"][:512] for text in texts]


def named_replies(runtime, probes: list[dict], system: str, repeat_penalty: float) -> list[bool]:
    """Per probe, asked as the chat asks (`system`, greedy, `repeat_penalty`, 40 tokens): does the
    reply name the fact (dreamer.bench.score.reply_names)."""
    from dreamer.bench.score import reply_names

    named = []
    for probe in probes:
        runtime.llm.reset()
        reply = "".join(runtime.stream([{"role": "system", "content": system},
                                        {"role": "user", "content": probe["question"]}],
                                       max_tokens=40, temperature=0.0, repeat_penalty=repeat_penalty))
        named.append(reply_names(reply, probe))
    return named


def ask_bench_probes(bench: Path, store, runtimes: dict) -> dict:
    """{served as: {kind: [named, asked]}}: the bench's recall and implication probes of the days the
    home learned, and its general-knowledge probes (dreamer.bench.days.general_probes), each asked as the chat asks (its system prompt the morning after the last day,
    greedy, the chat's repeat penalty, 40 tokens), and whether the reply names the fact
    (dreamer.bench.score.reply_names)."""
    from datetime import date, timedelta

    from agent.memory import system_message
    from dreamer.bench.days import general_probes
    from storage.config import Config

    last = max(row["day"] for row in store.db.query("select day from probes"))
    probes = [p for day in json.loads(bench.read_text())["days"] for p in day["probes"]
              if p["day"] <= last and p["kind"] in ("recall", "implication")] + general_probes()
    config = Config()
    system = system_message(config, date.fromisoformat(last) + timedelta(days=1))
    results = {}
    for name, runtime in runtimes.items():
        counts = {kind: [0, 0] for kind in ("recall", "implication", "general")}
        for probe, named in zip(probes, named_replies(runtime, probes, system, config.repeat_penalty)):
            counts[probe["kind"]][0] += named
            counts[probe["kind"]][1] += 1
        results[name] = counts
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fold_quality.json")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--types", default=",".join(TYPES), help="fold types to measure (Q8_0 is always one)")
    parser.add_argument("--bench", type=Path, help="a `dreamer bench` run's bench.json: its probes of the days "
                        "HOME has learned, asked as the chat asks, through each served model")
    parser.add_argument("--shares", default="0.5,0.75", help="part folds: shares of the changed weights at Q8_0")
    args = parser.parse_args(argv)

    import torch

    from agent.llama_runtime import LlamaRuntime
    from agent.models import embedded_gguf_path
    from agent.runtime import Adapter
    from dreamer.sleep.gate import general_texts
    from dreamer.bench.served import decode_tok_s
    from dreamer.lm.weights import adapters as adapters_off
    from dreamer.lm.weights import build_stack, load_base, plan_device, training_source
    from dreamer.morning.fold import expert_deltas, fold
    from benchmarks.fold_grid import CALIBRATED, GRID_TYPES, input_hessians, module_tensor_names, requantizer
    from dreamer.sleep.config import LoadConfig
    from storage import Store
    from storage.manifest import read_manifest
    from storage.paths import cache_dir

    record = {"command": command_line("benchmarks.fold_quality", argv), "machine": machine(load=True),
              "commit": git_commit()}
    torch.set_num_threads(1)
    experts = read_manifest(args.home)["experts"]
    if not experts:
        raise SystemExit(f"{args.home} has no active experts to fold")
    base_gguf = embedded_gguf_path()
    work = Path(tempfile.mkdtemp(prefix="fold-"))
    folded, record["fold"] = {}, {}
    scaled = [(Path(e["path"]), float(e["scale"])) for e in experts]

    def fold_as(name: str, qtype: str, only: set[str] | None = None) -> None:
        result = fold(base_gguf, scaled, work / f"{len(folded)}.gguf", qtype, only=only,
                      requantize=requantizer(qtype, hessians) if qtype in GRID_TYPES else None)
        folded[name] = result.path
        record["fold"][name] = {"seconds": round(result.seconds, 2), "mib": round(result.bytes / 2**20, 1),
                                "tensors": result.tensors}

    types = list(dict.fromkeys(["Q8_0", *[t for t in args.types.split(",") if t]]))
    source = training_source("", cache_dir(args.home))
    base, _ = load_base(source, plan_device(LoadConfig(device="cpu", threads=1)))
    stack = build_stack(base, [Path(e["path"]) for e in experts], None)
    store = Store(args.home / "dreamer.db")
    hessians = None
    if CALIBRATED in types:  # on the days' conversations as the chat sees them and the general prompts
        calibration = calibration_tokens(store, source)
        started = time.perf_counter()
        hessians = input_hessians(stack, calibration,
                                  module_tensor_names(stack, set(expert_deltas(scaled))))
        record["calibration"] = {"texts": len(calibration), "tokens": sum(len(ids) for ids in calibration),
                                 "seconds": round(time.perf_counter() - started, 1)}
    for qtype in types:
        fold_as(qtype, qtype)
    ranked = ranked_tensors(base_gguf, scaled)
    for share in [float(x) for x in args.shares.split(",") if x]:
        fold_as(f"Q8_0, {share:.0%} of the changed weights", "Q8_0", share_of(ranked, share))
    record["fold"]["base_mib"] = round(base_gguf.stat().st_size / 2**20, 1)

    probes = [f"{r['question']} {r['answer']}" for r in store.db.query("select question, answer from probes")]
    texts = {"general": general_texts()[:24], "probes": probes[:48]}
    adapters = [Adapter(Path(e["gguf_path"]), float(e["scale"])) for e in experts]
    runtime = LlamaRuntime(base_gguf, n_ctx=1024, n_threads=1, logits_all=True)
    tokens = {kind: [runtime.llm.tokenize(t.encode(), add_bos=False, special=False)[:256] for t in items]
              for kind, items in texts.items()}

    with_adapters = LlamaRuntime(base_gguf, n_ctx=1024, n_threads=1, logits_all=True)
    with_adapters.load_adapters(adapters)
    runtimes = {"llama.cpp base (no memory)": runtime, "llama.cpp base + experts as adapters": with_adapters,
                **{f"folded {q}": LlamaRuntime(p, n_ctx=1024, n_threads=1, logits_all=True) for q, p in folded.items()}}
    sums = {name: {kind: [0.0, 0] for kind in tokens} for name in ["transformers base (no memory)", *runtimes]}
    for kind, token_lists in tokens.items():  # one text at a time: a text's logits are 49152 x tokens
        for ids in token_lists:
            reference = hf_logits(stack, ids)
            with adapters_off(stack, None):
                outputs = {"transformers base (no memory)": hf_logits(stack, ids)}
            outputs.update({name: llama_logits(r, ids) for name, r in runtimes.items()})
            for name, logits in outputs.items():
                total, count = kl(reference, logits)
                sums[name][kind][0] += total
                sums[name][kind][1] += count
    if args.bench:
        record["replies"] = ask_bench_probes(args.bench, store, runtimes)
    for r in runtimes.values():
        r.llm.close()
    record["kl_to_trained"] = {name: {kind: round(t / max(n, 1), 5) for kind, (t, n) in per.items()}
                               for name, per in sums.items()}
    record["texts"] = {kind: len(t) for kind, t in tokens.items()}
    record["experts"] = len(experts)

    # Decode speed: one runtime per condition, alternated round by round.
    copies = []
    for index, adapter in enumerate(adapters):
        for copy in range(7):
            path = work / f"expert{index}-{copy}.gguf"
            shutil.copy(adapter.path, path)
            copies.append(Adapter(path, adapter.scale / 7))
    conditions = {"bare base": (base_gguf, []), f"base + {len(adapters)} adapters": (base_gguf, adapters),
                  f"base + {len(copies)} adapters": (base_gguf, copies),
                  **{f"folded {q}": (p, []) for q, p in folded.items()}}
    speeds: dict[str, list[float]] = {name: [] for name in conditions}
    for _ in range(args.rounds):
        for name, (path, stack_adapters) in conditions.items():
            runtime = LlamaRuntime(path, n_ctx=1024, n_threads=1)
            runtime.load_adapters(stack_adapters)
            decode_tok_s(runtime, PROMPTS, 64)  # warm-up
            speeds[name].append(round(decode_tok_s(runtime, PROMPTS, 64), 1))
            runtime.llm.close()
    record["decode_tok_s"] = {name: {"median": statistics.median(v), "rounds": v} for name, v in speeds.items()}
    # The chat's swap after a deep sleep: LlamaRuntime.load_model, from the base to the fold and back.
    runtime, swaps = LlamaRuntime(base_gguf, n_ctx=4096, n_threads=1), []
    for _ in range(args.rounds):
        for target in (folded["Q8_0"], None):
            start = time.perf_counter()
            runtime.load_model(target)
            swaps.append(time.perf_counter() - start)
    runtime.llm.close()
    record["swap_s"] = {"median": round(statistics.median(swaps), 3), "max": round(max(swaps), 3), "n": len(swaps),
                        "n_ctx": 4096}
    shutil.rmtree(work, ignore_errors=True)
    write_record(args.out, record)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
