"""Sleep quality: does a night of sleep teach dreamer what the user told it, and at what cost?

The script writes synthetic days of chat (fixed seed) and measures, on this machine:
- Data: one day per night, each with `--facts` fictional personal facts about the user
  (a pet's name, a sister's city, a job...), each told once in chat in one phrasing with a
  short assistant reply, spread over 1-3 conversations. Every night gets new kinds of facts,
  so what night 1 taught can be re-checked after nights 2 and 3. Each fact has one probe,
  phrased differently from the chat ("In which city does my sister Ana live now?"), with 3
  distractors of the same type (other cities): chance is 25%.
- Score: `dreamer.eval.evaluate.multiple_choice`, closed book (the question alone), with the stack
  under test active; general drift = mean per-token KL(base || stack) on `gate.general_texts()`,
  and the stack's perplexity on the same texts.
- Controls on every probe set (`controls`): "in-day", the same questions with other answers of
  the same day as distractors (a model that favours today's words whatever it is asked stays at
  chance there), and "generic", the original options after "Tell me something." (a rise there is
  a rise in the answers' prior, not recall). A real gain shows on the probes *and* in-day.
- Arms, each in its own temporary DREAMER_HOME, the embedded SmolLM2-135M-Instruct as the base:
  dreamer   `sleep_now` with the preset, night after night (the gate may reject a night: its
            status and reasons are reported as they are, and the stack that is active then is
            what is scored); before/after each night on that night's facts, night-1 facts after
            every night (retention). A rejected candidate is discarded by sleep, so it is also scored
            on the same probes inside the night, just before the gate measures it ("candidate").
  naive     one fresh LoRA (the preset's rank, alpha, learning rate, steps, batch size, schedule
            and clipping), next-token cross-entropy on the raw day rendered with the chat
            template (dreamer's system prompt + the turns), cut in max_seq_len windows.
  context   context distillation: the teacher (the base with the day in its system prompt,
            as `dreamer.sleep.seeding.memories.write_memories` does) answers the training questions dreamer's
            memory writer produces; a fresh LoRA is trained by cross-entropy on (question
            without the day -> teacher answer), same hyper-parameters. No replay, no anchor.
  The baselines run night 1 only.
- Cost per night (or per baseline run): wall seconds of `sleep_now` / of the whole baseline
  (model load, teacher, training, save), and peak resident memory of the process that ran it.
  Every night and run is its own fresh process (spawn); the peak is VmHWM from /proc, since
  ru_maxrss in a spawned child starts at its parent's peak. Scoring runs in a separate process.

    .venv/bin/python benchmarks/sleep_quality.py [--preset cpu-tiny] [--nights 3] [--arms dreamer,naive,context]
        [--facts 10] [--seed 0] [--night-seed N] [--out bench-out/sleep_quality.json] [--steps N] [--quick] [--model DIR]

`--seed` draws the days (facts, probes, controls) and, unless `--night-seed` is given, seeds the
nights too (the teacher's and student's sampling, the order of the batches). The same days with
another `--night-seed` measure how much of a score is the night's own randomness.

`--quick` (4 facts, 2 nights, 4 steps, 2 questions per conversation, 1 teacher sample, answers of at
most 16 tokens) is a smoke test of the whole pipeline, not a result; with `--model` set to the tests'
tiny model (dreamer/bench/tiny.py) it runs in about a minute.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date, timedelta
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain file from a checkout, installed or not

FIRST_DAY = date(2025, 3, 3)
GOAL = 0.8  # the target for night-1 accuracy
DISTRACTORS = 3
POOLS = {k: v.split("|") for k, v in {
    "city": "Lisbon|Porto|Valencia|Lyon|Krakow|Tallinn|Bergen|Trieste|Ghent|Seville|Leipzig|Bologna|Galway|Tampere",
    "name": "Ana|Tomas|Ingrid|Rafael|Yuki|Priya|Mateo|Oksana|Lars|Amara|Dmitri|Noor|Felix|Carmen|Hugo|Leila",
    "pet": "Miso|Pepper|Biscuit|Noodle|Juniper|Waffle|Pickle|Mochi|Ziggy|Clementine|Tofu|Pumpkin",
    "job": "marine biologist|dental hygienist|air traffic controller|landscape architect|sound engineer|"
           "pastry chef|tax auditor|veterinary nurse|court interpreter|geologist",
    "food": "ramen|paella|pierogi|shakshuka|pho|risotto|falafel|goulash|tamales|bibimbap",
    "colour": "teal|burgundy|mustard yellow|silver|olive green|navy blue|bright orange|charcoal grey",
    "hobby": "pottery|rock climbing|birdwatching|fencing|beekeeping|origami|salsa dancing|archery|sailing",
    "surname": "Okafor|Lindqvist|Moreau|Tanaka|Kowalski|Haddad|Brennan|Castillo|Novak|Ferreira",
    "weekday": "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday",
    "instrument": "cello|banjo|trumpet|harp|accordion|ukulele|oboe|drums",
    "language": "Portuguese|Finnish|Japanese|Swahili|Icelandic|Korean|Greek|Polish",
    "car": "Volvo|Fiat|Subaru|Skoda|Peugeot|Mazda|Renault|Kia",
    "drink": "cortado|chai latte|matcha|hibiscus tea|kombucha|hot chocolate|espresso|oat milk flat white",
    "flower": "tulips|peonies|lavender|sunflowers|orchids|daffodils|dahlias|camellias",
    "sport": "volleyball|badminton|water polo|handball|squash|curling|rugby|table tennis",
    "allergen": "peanuts|shellfish|pollen|penicillin|sesame|kiwi|latex|strawberries",
    "country": "Iceland|Vietnam|Morocco|Chile|Norway|Japan|Peru|Greece|Georgia|Mexico",
    "author": "Ursula Le Guin|Haruki Murakami|Toni Morrison|Italo Calvino|Kazuo Ishiguro|Olga Tokarczuk|"
              "Jorge Luis Borges",
    "street": "Maple|Juniper|Harbour|Chestnut|Willow|Quarry|Orchard|Lantern",
    "plant": "monstera|fiddle-leaf fig|snake plant|bonsai|rubber plant|bird of paradise|aloe vera|peace lily",
    "animal": "tortoise|parrot|ferret|hamster|goldfish|rabbit|iguana|hedgehog",
    "subject": "chemistry|art history|linguistics|civil engineering|philosophy|astronomy|economics|botany",
}.items()}
# (pool, how the user says it, how the probe asks it): {v} the answer, {p} a person's name.
SLOTS = [
    ("pet", "By the way, my dog is called {v}.", "What is the name of my dog?"),
    ("pet", "We adopted a kitten last week and named her {v}.", "What did we name our new kitten?"),
    ("city", "My sister {p} moved to {v} last year.", "In which city does my sister {p} live now?"),
    ("job", "I work as a {v}, it keeps me busy.", "What is my job?"),
    ("food", "Honestly, my favourite food is {v}. I could eat it every day.", "Which dish do I like most?"),
    ("name", "My best friend from school is called {v}.", "What is the name of my best friend from school?"),
    ("colour", "I finally bought a car, a {v} one!", "What colour is my car?"),
    ("hobby", "On weekends I mostly do {v}.", "Which hobby do I spend my weekends on?"),
    ("city", "I was born in {v}, though we left when I was small.", "Where was I born?"),
    ("surname", "My doctor is Dr. {v}, she is very patient.", "What is my doctor's name?"),
    ("weekday", "I have a yoga class every {v} evening.", "On which day of the week is my yoga class?"),
    ("instrument", "I've been learning to play the {v} since spring.", "Which instrument am I learning?"),
    ("language", "I'm taking evening lessons in {v}.", "Which language am I studying?"),
    ("job", "My brother {p} is a {v}.", "What does my brother {p} do for a living?"),
    ("name", "My partner is named {v}; we met at university.", "What is my partner's name?"),
    ("car", "My car is an old {v} I bought second-hand.", "What make is my car?"),
    ("drink", "Every morning I have a {v} before work.", "What do I drink in the morning?"),
    ("flower", "My favourite flowers are {v}.", "Which flowers do I like best?"),
    ("city", "My mother lives in {v}; I visit her every summer.", "Which city do I travel to when I visit my mother?"),
    ("name", "Our neighbour {v} has been helping me with the garden.",
     "Who is the neighbour that helps me with the garden?"),
    ("sport", "I play {v} in a local amateur club.", "Which sport do I play at my club?"),
    ("allergen", "I'm allergic to {v}, so I have to be careful.", "What am I allergic to?"),
    ("colour", "My favourite colour has always been {v}.", "Which colour do I like best?"),
    ("name", "My manager at work is called {v}.", "What is my manager's name?"),
    ("country", "Next month we're going on holiday to {v}.", "Which country am I travelling to next month?"),
    ("author", "I'm reading a novel by {v} right now.", "Whose novel am I reading at the moment?"),
    ("street", "We live on {v} Street.", "On which street is my home?"),
    ("plant", "There's a big {v} in my living room and I'm proud of it.", "What plant do I keep in my living room?"),
    ("animal", "When I was a kid we had a pet {v}.", "What kind of pet did I have as a child?"),
    ("subject", "At university I studied {v}.", "What did I study at university?"),
]
OPENERS = [("Hi! Got a minute?", "Of course, what's on your mind?"), ("Good morning!", "Good morning! How can I help?"),
           ("Hey, just wanted to chat a bit.", "Sure, I'm listening."),
           ("Hello again.", "Hello! Nice to hear from you.")]
REPLIES = ["That's good to know!", "Thanks for telling me.", "Oh, nice!", "I'll keep that in mind.",
           "Sounds lovely.", "Interesting, tell me more whenever you like."]


def make_days(seed: int, nights: int, facts: int) -> list[dict]:
    """Per night: the day's conversations (Store.import_conversations records) and its probes."""
    rng = random.Random(seed)
    if nights * facts > len(SLOTS):
        raise SystemExit(f"--nights x --facts must be at most {len(SLOTS)} (distinct kinds of facts)")
    slots = rng.sample(SLOTS, len(SLOTS))  # all of them: night 1's facts do not depend on --nights
    unused = {k: rng.sample(v, len(v)) for k, v in POOLS.items()}  # no two facts share an answer or a person
    days = []
    for night in range(nights):
        day = str(FIRST_DAY + timedelta(days=night))
        told, probes = [], []
        for pool, tell, question in slots[night * facts:(night + 1) * facts]:
            value, person = unused[pool].pop(), unused["name"].pop() if "{p}" in tell else ""
            wrong = rng.sample([v for v in POOLS[pool] if v != value], DISTRACTORS)
            told.append(tell.format(v=value, p=person))
            probes.append({"day": day, "question": question.format(p=person), "answer": value, "distractors": wrong})
        n_conv = rng.randint(1, min(3, facts))
        records = []
        for part in (told[i::n_conv] for i in range(n_conv)):
            opener, greeting = rng.choice(OPENERS)
            messages = [{"role": "user", "content": opener}, {"role": "assistant", "content": greeting}]
            for fact in part:
                messages += [{"role": "user", "content": fact}, {"role": "assistant", "content": rng.choice(REPLIES)}]
            records.append({"day": day, "title": part[0][:48], "messages": messages})
        days.append({"day": day, "records": records, "probes": probes})
    return days


def controls(probes: list[dict], seed: int) -> dict[str, list[dict]]:
    """Checks on what a gain means (keys are suffixes of a probe set's name).

    `_inday`: the same questions, with other answers of the same day as distractors. A model that
    favours today's words whatever it is asked stays at chance (25%) here; only one that ties each
    answer to its question gains. `_generic`: the original options after an unrelated question
    ("Tell me something."); a rise here is a rise in the answers' prior, not recall.
    `_tomorrow`: the original probes under the chat's system prompt of the next day, as the chat
    asks them the morning after (the probes themselves are asked with the question alone).
    """
    from agent.memory import system_message
    from storage import Config

    rng = random.Random(seed + 1)  # its own stream: the facts and probes above do not change
    answers = [p["answer"] for p in probes]
    inday = [{**p, "distractors": rng.sample([a for a in answers if a != p["answer"]], min(DISTRACTORS, len(answers) - 1))}
             for p in probes]
    generic = [{**p, "question": "Tell me something."} for p in probes]
    tomorrow = [{**p, "system": system_message(Config(), date.fromisoformat(p["day"]) + timedelta(days=1))} for p in probes]
    return {"_inday": inday, "_generic": generic, "_tomorrow": tomorrow}


def scored(model, tokenizer, rows: list[dict]) -> dict:
    """Multiple-choice accuracy of one probe set, under its system prompt if it names one (one per set)."""
    from dreamer.eval.evaluate import multiple_choice

    flags = multiple_choice(model, tokenizer, as_probes(rows), system=rows[0].get("system") if rows else None)
    return {"accuracy": sum(flags) / len(flags), "correct": flags}


# --- work done in child processes ---------------------------------------------------
class LogPhases:
    """sleep_now's progress sink: a log line as each phase starts, with how long the last one took."""

    def __init__(self, label: str) -> None:
        self.label, self.last = label, None

    def phase(self, name: str, total: int | None = None):
        now, done = time.perf_counter(), [0]
        took = f"; {self.last[0]} took {now - self.last[1]:.0f} s ({self.last[2][0]} steps)" if self.last else ""
        print(f"[{time.strftime('%H:%M:%S')}]   {self.label}: {name} (up to {total}){took}", flush=True)
        self.last = (name, now, done)
        return lambda n=1: done.__setitem__(0, done[0] + n)


def prepare_source(cache: str) -> str:
    from dreamer.lm.weights import embedded_training_dir

    return str(embedded_training_dir(Path(cache)))  # the GGUF dequantized once (~30 s), then reused


def as_probes(rows: list[dict]) -> list:
    from dreamer.eval.probes import Probe

    return [Probe(r["day"], r["question"], r["answer"], tuple(r["distractors"])) for r in rows]


def dreamer_night(home: str, source: str, records: list[dict], cfg, label: str = "dreamer",
                  probes: dict[str, list[dict]] | None = None) -> dict:
    from dreamer.sleep import gate
    from dreamer.sleep.report import process_memory_mb
    from dreamer.sleep.night import sleep_now
    from dreamer.morning.stack import active_paths
    from dreamer.lm.weights import NEW, adapters
    from storage import Config, Store

    # The gate discards a rejected candidate: score it on our probes too, just before the gate
    # measures it (same model, same moment), and keep that time out of the night's wall time.
    candidate, gate_measure = {"seconds": 0.0}, gate.measure

    def measure_and_score(model, tokenizer, stack, *rest, **kwargs):
        scoring = time.perf_counter()
        with adapters(model, stack + [NEW]):
            for key, rows in (probes or {}).items():
                candidate[key] = scored(model, tokenizer, rows)
        candidate["seconds"] += time.perf_counter() - scoring
        return gate_measure(model, tokenizer, stack, *rest, **kwargs)

    gate.measure = measure_and_score  # sleep.py calls it as gate.measure(...)
    os.environ["DREAMER_HOME"] = home
    store = Store(Path(home) / "dreamer.db")
    store.import_conversations(records)
    start = time.perf_counter()
    outcome = sleep_now(store, Config(train_model=source), cfg, home=Path(home), progress=LogPhases(label))
    wall = time.perf_counter() - start - candidate["seconds"]
    active = [str(p) for p in active_paths(store)]
    store.close()
    return {"status": outcome.status, "message": outcome.message, "metrics": outcome.metrics,
            "report": outcome.report, "wall_s": wall, "peak_rss_mb": process_memory_mb(), "active": active,
            "candidate": candidate}


def baseline(arm: str, out_dir: str, source: str, day: dict, cfg, seed: int) -> dict:
    import torch

    from agent.memory import system_message
    from dreamer.sleep.seeding.distill import clip_prompt, continuation_ids
    from dreamer.sleep.seeding.memories import write_memories
    from dreamer.lm.generation import chat_ids
    from dreamer.sleep.report import process_memory_mb
    from dreamer.morning.stack import save_candidate
    from dreamer.lm.weights import base_fingerprint, build_stack, load_base, plan_device, trainable_parameters
    from storage import Config

    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    base, tok = load_base(source, plan_device(cfg.load))
    system = system_message(Config(), date.fromisoformat(day["day"]))  # what the chat's prompt said that day
    max_len, info = cfg.load.max_seq_len, {}
    if arm == "naive":
        # The chat as it was, loss on every token (the facts are in the user's turns); windows of
        # max_seq_len so no fact is cut off.
        groups = []
        for record in day["records"]:
            ids = tok.apply_chat_template([{"role": "system", "content": system}] + record["messages"],
                                          tokenize=True, return_dict=False)
            groups += [[(ids[i:i + max_len], ids[i:i + max_len])] for i in range(0, len(ids) - 1, max_len)]
    else:
        teacher_start = time.perf_counter()
        memories = write_memories(base, tok, day["records"], day=day["day"], base_system=system, stack=[],
                                  cfg=cfg.memories, rng=rng)
        info = {"teacher_s": time.perf_counter() - teacher_start, "counts": memories.counts}
        groups = []  # one group per training prompt, one (ids, labels) per teacher answer: loss on the answer only
        for example in memories.examples:
            group = []
            for text in example.samples:
                reply = continuation_ids(tok, text)[: max_len // 2]
                prompt = clip_prompt(chat_ids(tok, example.student), max_len, len(reply))
                group.append((prompt + reply, [-100] * len(prompt) + reply))
            groups.append(group)
    model = build_stack(base, [], cfg.distill)
    d, device = cfg.distill, next(model.parameters()).device
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=d.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # the same warm-up + cosine as dreamer.sleep.seeding.distill
        optimizer, lambda s: min(1.0, (s + 1) / max(1, d.steps // 10)) * 0.5 * (1 + math.cos(math.pi * s / d.steps)))
    losses, train_start = [], time.perf_counter()
    model.train()
    for _ in range(d.steps):
        total = 0.0
        for _ in range(d.batch_size):  # like dreamer: a prompt at random, then one of its answers
            ids, labels = rng.choice(rng.choice(groups))
            loss = model(input_ids=torch.tensor([ids], device=device),
                         labels=torch.tensor([labels], device=device)).loss / d.batch_size
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, d.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    model.eval()
    save_candidate(model, Path(out_dir), {"base": base_fingerprint(base), "arm": arm})
    info.update(train_s=time.perf_counter() - train_start, loss_first=sum(losses[:5]) / len(losses[:5]),
                loss_last=sum(losses[-5:]) / len(losses[-5:]), sequences=sum(len(g) for g in groups))
    return {"status": "trained", "message": f"{arm} LoRA, {d.steps} steps x {d.batch_size}", "metrics": info,
            "wall_s": time.perf_counter() - start, "peak_rss_mb": process_memory_mb(), "active": [out_dir]}


def score(source: str, paths: list[str], probe_sets: dict[str, list[dict]], cfg, general: bool = True) -> dict:
    import torch

    from dreamer.eval.evaluate import general_drift, perplexity
    from dreamer.sleep.gate import general_texts
    from dreamer.lm.weights import build_stack, load_base, plan_device, stack_names

    base, tok = load_base(source, plan_device(cfg.load))
    model = build_stack(base, [Path(p) for p in paths], None)  # every expert active, as the chat uses them
    names = stack_names(model) if paths else []
    out = {"stack": names, "torch_threads": torch.get_num_threads(),  # as load_base's device plan set them
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    for key, rows in probe_sets.items():
        out[key] = scored(model, tok, rows)
    if general:
        texts, max_len = general_texts(), cfg.load.max_seq_len
        out["drift_kl"] = general_drift(model, tok, texts, None, names, max_len=max_len) if names else 0.0
        out["perplexity"] = perplexity(model, tok, texts, max_len=max_len)
    return out


def die_with_parent(parent: int) -> None:
    """Worker initializer: on Linux, end this worker when `parent`, which started it, dies.

    A spawned worker outlives a killed benchmark: its night trained on for half an hour, unseen,
    taking a core from the next runs (seen twice). PR_SET_PDEATHSIG asks the kernel for SIGTERM
    when the parent goes; the workers are started from the main thread, whose exit is the one
    that counts.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM) != 0:  # 1 = PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # it died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)


def worker_pool() -> ProcessPoolExecutor:
    """One fresh interpreter (spawned, not forked: no torch state is shared) that dies with us."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))


def fresh_process(fn, *args):
    """Run fn in a new interpreter, so its peak memory and its imports are its own."""
    with worker_pool() as pool:
        return pool.submit(fn, *args).result()


# --- the run ------------------------------------------------------------------------
def code_version() -> str:
    """A digest of the code and presets under test (the tree is edited while benchmarks run)."""
    files = sorted(p for d in ("dreamer", "storage", "agent", "assets") for p in (ROOT / d).rglob("*")
                   if p.suffix in (".py", ".toml", ".jsonl"))
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()[:12]


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    versions = {p: metadata.version(p) for p in ("torch", "transformers", "peft")}
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "code": code_version(), "root": str(ROOT), **versions}


def table(result: dict) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    num = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    rows = [("arm", "night", "outcome", "today's facts: before -> after", "controls: in-day, generic, tomorrow's prompt",
             "night-1 facts", "drift KL vs base", "perplexity", "gate: its probes, KL", "wall s", "peak RSS MiB"),
            ("---",) * 11]
    b = result["base"]
    controls_of = lambda e, key: ", ".join(pct(e.get(f"{key}{c}", {}).get("accuracy")) for c in ("_inday", "_generic", "_tomorrow"))  # noqa: E731
    rows.append(("base", "-", "-", pct(b["night1"]["accuracy"]), controls_of(b, "night1"), pct(b["night1"]["accuracy"]),
                 "0", num(b["perplexity"], ".2f"), "-", "-", "-"))
    for arm, nights in result["arms"].items():
        for n in nights:
            e, g = n.get("eval", {}), n.get("metrics", {}).get("gate")
            gate = f"{pct(g['today_before'])} -> {pct(g['today_after'])}, {g['drift']:.3f}" if g else "-"
            cand = n.get("candidate", {}).get("today", {}).get("accuracy")
            rows.append((arm, str(n["night"]), n["status"],
                         f"{pct(n['before'])} -> {pct(e.get('today', {}).get('accuracy'))}"
                         + (f" (candidate {pct(cand)})" if cand is not None and n["status"] != "promoted" else ""),
                         controls_of(e, "today"), pct(e.get("night1", {}).get("accuracy")), num(e.get("drift_kl"), ".4f"),
                         num(e.get("perplexity"), ".2f"), gate, num(n.get("wall_s"), ".0f"),
                         num(n.get("peak_rss_mb"), ".0f")))
    m, a = result["machine"], result["args"]
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    base_all = ", ".join(f"{k} {pct(v['accuracy'])}" for k, v in b.items() if k.startswith("night"))
    lines += ["", f"Code {m['code']} at {m['root']}. Machine: {m['cpu']}, {m['cores']} cores, "
              f"Python {m['python']}, torch {m['torch']} "
              f"({b['torch_threads']} threads), transformers {m['transformers']}, peft {m['peft']}. "
              f"Load average before/after: {result['loadavg'][0]:.2f}/{result['loadavg'][-1]:.2f}.",
              f"Preset {a['preset']} (distill.steps {result['config']['distill']['steps']}, questions per conversation "
              f"{result['config']['memories']['questions_per_conversation']}), {a['facts']} facts a night, seed "
              f"{a['seed']} (night seed {result['config']['load']['seed']}), {DISTRACTORS} distractors a probe "
              f"(chance {100 / (DISTRACTORS + 1):.0f}%). "
              f"Base model on each night's facts: {base_all}. Baselines: night 1 only."]
    for n in result["arms"].get("dreamer", []):
        if n["status"] == "rejected":
            lines.append(f"dreamer night {n['night']}: {n['message']}")
    first = next(iter(result["arms"].get("dreamer", [])), None)
    if first and "eval" in first:
        acc = first["eval"]["today"]["accuracy"]
        lines.append(f"Goal (night 1 >= {GOAL:.0%}): {pct(acc)}, {'met' if acc >= GOAL else 'not met'}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-tiny")
    parser.add_argument("--nights", type=int, default=3)
    parser.add_argument("--arms", default="dreamer,naive,context")
    parser.add_argument("--facts", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the synthetic days (and the nights, see --night-seed)")
    parser.add_argument("--night-seed", type=int, help="the nights' random seed (default: --seed)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "sleep_quality.json")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench-out" / "cache", help="shared model cache")
    parser.add_argument("--model", help="training model folder (default: the embedded model, dequantized in --cache)")
    parser.add_argument("--steps", type=int, help="override distill.steps (smoke tests)")
    parser.add_argument("--quick", action="store_true", help="smoke test (see above)")
    args = parser.parse_args()
    if args.quick:
        args.facts, args.nights, args.steps = 4, 2, args.steps or 4
    arms = [a for a in args.arms.split(",") if a]
    if set(arms) - {"dreamer", "naive", "context"}:
        raise SystemExit(f"unknown arm in --arms {args.arms!r}")

    from dreamer.sleep.config import load_preset, sleep_config_from_dict  # light: no torch

    raw = load_preset(args.preset).as_dict()
    preset = raw.pop("preset")
    night_seed = args.seed if args.night_seed is None else args.night_seed
    raw["load"]["seed"] = night_seed
    if args.steps:
        raw["distill"]["steps"] = args.steps
    if args.quick:  # fewer and shorter generations: the teacher's and the gate's sampling dominate a night
        raw["memories"].update(questions_per_conversation=2, teacher_samples=1, max_new_tokens=16)
        raw["distill"]["rl_new_tokens"] = 8
    cfg = sleep_config_from_dict(raw, preset=preset)
    days = make_days(args.seed, args.nights, args.facts)
    result = {"machine": machine(), "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "config": cfg.as_dict(), "loadavg": [os.getloadavg()[0]], "days": days, "arms": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every step, so a long run that is stopped still leaves its numbers
        args.out.write_text(json.dumps(result, indent=1, default=str))

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # One long-lived process scores every stack; the main process never imports torch, so the
    # processes it spawns start small.
    with worker_pool() as scorer, \
            tempfile.TemporaryDirectory(prefix="sleep-quality-") as tmp:
        source = args.model or scorer.submit(prepare_source, str(args.cache)).result()
        sets = {f"night{k + 1}{suffix}": rows for k, d in enumerate(days)
                for suffix, rows in {"": d["probes"], **controls(d["probes"], args.seed)}.items()}
        result["base"] = scorer.submit(score, source, [], sets, cfg).result()
        log("base: " + ", ".join(f"{k} {v['accuracy']:.0%}" for k, v in result["base"].items()
                                 if k.startswith("night")))
        save()
        for arm in arms:
            nights, active = result["arms"].setdefault(arm, []), []
            for k in range(args.nights if arm == "dreamer" else 1):
                today = {f"today{suffix}": rows for suffix, rows in
                         {"": days[k]["probes"], **controls(days[k]["probes"], args.seed)}.items()}
                before = (result["base"][f"night{k + 1}"]["accuracy"] if not active else
                          scorer.submit(score, source, active, today, cfg, False).result()["today"]["accuracy"])
                log(f"{arm} night {k + 1}: training ({days[k]['day']}, {len(days[k]['records'])} conversations)")
                try:
                    if arm == "dreamer":
                        row = fresh_process(dreamer_night, str(Path(tmp) / arm), source, days[k]["records"], cfg,
                                            f"night {k + 1}", {**today, "night1": days[0]["probes"]})
                    else:
                        row = fresh_process(baseline, arm, str(Path(tmp) / arm), source, days[k], cfg, night_seed)
                    active = row["active"]
                except Exception as err:  # recorded, and the next night or arm still runs
                    row = {"status": "failed", "message": f"{type(err).__name__}: {err}"}
                row.update(night=k + 1, before=before)
                row["eval"] = scorer.submit(score, source, active, {**today, "night1": days[0]["probes"]}, cfg).result()
                nights.append(row)
                cand = {key: v["accuracy"] for key, v in row.get("candidate", {}).items() if key != "seconds"}
                log(f"{arm} night {k + 1}: {row['status']}, today's facts {before:.0%} -> "
                    f"{row['eval']['today']['accuracy']:.0%}, night-1 facts {row['eval']['night1']['accuracy']:.0%}, "
                    f"controls: in-day {row['eval']['today_inday']['accuracy']:.0%}, "
                    f"generic {row['eval']['today_generic']['accuracy']:.0%}, "
                    f"under tomorrow's chat prompt {row['eval']['today_tomorrow']['accuracy']:.0%}, "
                    + (f"candidate {cand}, " if cand else "") +
                    f"{row.get('wall_s', 0):.0f} s, {row.get('peak_rss_mb', 0):.0f} MiB; {row['message']}")
                save()
    result["loadavg"].append(os.getloadavg()[0])
    save()
    print(table(result))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
