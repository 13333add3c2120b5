"""The night pipeline on a tiny in-process Llama: training touches only the new expert, the gate
decides, and every way a night can end leaves the store consistent."""

import json
import random
import time
import threading

import pytest
import torch

from dreamer.sleep import gate as gate_stage
from dreamer.sleep.seeding.distill import distill
from dreamer.sleep.seeding.memories import Example
from dreamer.sleep.outcome import SleepBusy
from dreamer.sleep.lock import sleep_lock
from dreamer.sleep.night import sleep_now
from dreamer.sleep.config import (
    DistillConfig, GateConfig, LoadConfig, SleepConfigError, load_preset, preset_names, sleep_config_from_dict,
)
from dreamer.morning.stack import save_candidate
from storage.manifest import read_manifest
from dreamer.lm.weights import NEW, AdapterMismatch, build_stack, load_base, plan_device
from storage import Config, ledger

SMALL = {
    "memories": {"questions_per_conversation": 2, "max_new_tokens": 10, "teacher_samples": 1},
    "distill": {"steps": 3, "batch_size": 2, "rl_every": 1, "rl_new_tokens": 6, "alpha": 0.7, "drift_weight": 0.5},
    "load": {"max_seq_len": 128},
}
GOOD_FIGURES = {"today_probes": 3, "old_probes": 0, "today_before": 0.0, "today_after": 1.0, "old_before": None,
                "old_after": None, "drift": 0.01, "replies_before": [], "replies_after": []}


def night(store, tiny_dir, home, judge, **kwargs):
    cfg = sleep_config_from_dict(SMALL, preset="test")
    config = Config(train_model=str(tiny_dir), model=str(tiny_dir / "model.gguf"))  # its chat twin, for the fold
    return sleep_now(store, config, cfg, home=home, judge=judge, **kwargs)


def test_every_preset_loads():
    assert {"cpu-tiny", "gpu-qlora"} <= set(preset_names())
    for name in preset_names():
        cfg = load_preset(name)
        assert cfg.preset == name and cfg.distill.steps > 0


@pytest.mark.parametrize(
    "data, message",
    [
        ({"distill": {"lmbda": 1.5}}, "distill.lmbda must be in [0, 1]"),
        ({"distill": {"divergnce": "jsd"}}, "unknown key distill.divergnce"),
        ({"distill": {"divergence": "l2"}}, "distill.divergence must be one of"),
        ({"dreams": {}}, "unknown section [dreams]"),
        ({"load": {"device": "tpu"}}, "load.device must be auto, cpu or cuda"),
        ({"gate": {"max_drift": 0}}, "gate.max_drift must be > 0"),
        ({"distill": {"targets": "embeddings"}}, "distill.targets must be one of all, mlp, attention"),
        ({"distill": {"pass_batch": 0}}, "distill.pass_batch must be a positive integer"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(SleepConfigError) as caught:
        sleep_config_from_dict(data)
    assert message in str(caught.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(SleepConfigError, match="cpu-tiny"):
        load_preset("gpu-huge")


# An MLP-only expert on top of an all-projection one; one student pass per sequence, or both in one.
@pytest.mark.parametrize("targets, pass_batch", [("all", 1), ("mlp", 1), ("all", 2)])
def test_only_the_new_expert_changes(tiny_dir, tmp_path, fake_judge, targets, pass_batch):
    base, tokenizer = load_base(str(tiny_dir), plan_device(LoadConfig()))
    earlier = build_stack(base, [], DistillConfig(rank=4))
    for name, param in earlier.named_parameters():
        if f".{NEW}." in name and "lora_B" in name:
            param.data.normal_(0, 0.1)  # a trained-looking earlier expert
    save_candidate(earlier, tmp_path / "night1", {"base": {}})
    meta = json.loads((tmp_path / "night1" / "metadata.json").read_text())
    from dreamer.lm.weights import base_fingerprint

    (tmp_path / "night1" / "metadata.json").write_text(json.dumps({**meta, "base": base_fingerprint(base)}))

    base, tokenizer = load_base(str(tiny_dir), plan_device(LoadConfig()))
    model = build_stack(base, [tmp_path / "night1"], DistillConfig(rank=4, targets=targets))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(f".{NEW}." in n for n in trainable)

    system = [{"role": "system", "content": "You are dreamer."}]
    day = [{"role": "system", "content": "You are dreamer. The user said: my sister Ana lives in Lisbon."}]
    ask = [{"role": "user", "content": "Where does Ana live?"}]
    today = [Example("today", system + ask, day + ask, ["night1"], ["She lives in Lisbon."])]
    cfg = DistillConfig(steps=4, batch_size=2, lmbda=0.5, alpha=0.7, rl_group=2, rl_new_tokens=4, learning_rate=1e-2,
                        drift_weight=1.0, pass_batch=pass_batch)
    cloze = [(system + [{"role": "user", "content": 'Which word? "Ana lives in ___."'}], "Lisbon", ["Paris", "Oslo"])]
    wall = time.monotonic()
    log = distill(model, tokenizer, today=today, replay=[], anchor=[], documents=[(system + ask, "She lives in Lisbon now.")],
                  stack=["night1"], cfg=cfg, max_len=128, judge=fake_judge, rng=random.Random(0), clozes=cloze,
                  general_texts=["The library opens at nine.", "Water boils at one hundred degrees."])
    wall = time.monotonic() - wall
    assert log.steps == 4 and log.on_policy + log.off_policy == 8 and log.divergence[0] > 0
    assert 0 < log.seconds <= wall  # the reported training time is this call's
    assert len(log.cloze) == 4 and log.cloze[0] > 0  # the cloze recall term ran every step
    # The drift term too: zero while the new expert is still zero (LoRA's B starts at 0), then not.
    assert len(log.drift) == 4 and log.drift[0] == pytest.approx(0.0, abs=1e-7) and log.drift[-1] > 0

    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "the new expert did not learn"
    assert changed <= trainable
    assert any("lora_B" in n for n in changed)
    for name, param in model.named_parameters():
        if name not in trainable:
            assert torch.equal(param, before[name]), f"{name} is frozen but changed"


def test_expert_targets_pick_the_adapted_projections(tiny_dir):
    def adapted(targets: str) -> set[str]:
        base, _ = load_base(str(tiny_dir), plan_device(LoadConfig()))
        model = build_stack(base, [], DistillConfig(rank=4, targets=targets))
        return {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters()
                if p.requires_grad and ".lora_A." in n}

    assert adapted("all") == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert adapted("mlp") == {"gate_proj", "up_proj", "down_proj"}
    assert adapted("attention") == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_gate_accepts_and_rejects():
    cfg = GateConfig(min_gain=0.1, max_old_drop=0.05, max_drift=0.2)
    assert gate_stage.decide(GOOD_FIGURES, cfg).passed
    worse = {**GOOD_FIGURES, "today_after": 0.05, "old_before": 0.9, "old_after": 0.5, "drift": 0.5}
    result = gate_stage.decide(worse, cfg)
    assert not result.passed
    assert [r.split(":")[0] for r in result.reasons] == [
        "today's recall did not improve enough", "earlier memories faded", "general drift too large"]


def test_promoted_night_is_saved_and_consolidated(day_store, tiny_dir, dreamer_home, fake_judge, monkeypatch):
    monkeypatch.setattr(gate_stage, "measure", lambda *a, **k: dict(GOOD_FIGURES))
    outcome = night(day_store, tiny_dir, dreamer_home, fake_judge)
    assert outcome.status == "promoted", outcome.message
    [adapter] = ledger.adapters(day_store, "active")
    assert adapter["night"] == 1
    assert day_store.unconsolidated_count() == 0
    manifest = read_manifest(dreamer_home)
    assert manifest["version"] == 1 and manifest["experts"][0]["path"] == adapter["path"]
    # exported for llama.cpp beside the PEFT folder, and listed in the manifest
    gguf_file = dreamer_home / "adapters" / "run-0001" / "adapter.gguf"  # named after its run, never reused
    assert gguf_file.is_file() and manifest["experts"][0]["gguf_path"] == adapter["gguf_path"] == str(gguf_file)
    meta = json.loads((dreamer_home / "adapters" / "run-0001" / "metadata.json").read_text())
    assert meta["night"] == 1 and meta["run_id"] == 1 and meta["rank"] == 16 and meta["conversation_ids"] == [1]
    # private, like everything in DREAMER_HOME: the folder 0700, its files and the manifest 0600
    import os
    import stat

    folder = dreamer_home / "adapters" / "run-0001"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in folder.iterdir()} == {0o600}
    assert stat.S_IMODE(os.stat(dreamer_home / "adapters" / "manifest.json").st_mode) == 0o600
    assert "Morning report: night 1" in outcome.report
    assert "- drift term, KL on general text " in outcome.report and "- cloze recall loss " in outcome.report
    assert ledger.runs(day_store)[0]["status"] == "promoted"
    assert day_store.memory_version() == "night 1"
    # the saved expert loads back onto the same base, frozen
    base, _ = load_base(str(tiny_dir), plan_device(LoadConfig()))
    stacked = build_stack(base, [dreamer_home / "adapters" / "run-0001"], None)
    assert not any(p.requires_grad for p in stacked.parameters())


def test_rejected_night_changes_nothing(day_store, tiny_dir, dreamer_home, fake_judge, monkeypatch):
    monkeypatch.setattr(gate_stage, "measure", lambda *a, **k: {**GOOD_FIGURES, "today_after": 0.0})
    outcome = night(day_store, tiny_dir, dreamer_home, fake_judge)
    assert outcome.status == "rejected" and "did not improve" in outcome.message
    assert ledger.adapters(day_store) == []
    assert day_store.unconsolidated_count() == 3
    run = ledger.runs(day_store)[0]
    assert run["status"] == "rejected" and "did not improve" in run["reason"] and run["report"]
    assert not any(p.name.startswith(".candidate") for p in (dreamer_home / "adapters").glob("*"))


def test_interrupted_sleep_leaves_everything_as_it_was(day_store, tiny_dir, dreamer_home, fake_judge):
    def ctrl_c(step, info):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        night(day_store, tiny_dir, dreamer_home, fake_judge, on_step=ctrl_c)
    assert ledger.runs(day_store)[0]["status"] == "interrupted"
    assert ledger.adapters(day_store) == [] and day_store.unconsolidated_count() == 3
    assert not (dreamer_home / "adapters").exists() or not any((dreamer_home / "adapters").iterdir())
    with sleep_lock(dreamer_home):  # the lock was released
        pass


def test_failed_sleep_is_recorded_and_changes_nothing(day_store, tiny_dir, dreamer_home, fake_judge, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gate_stage, "measure", boom)
    with pytest.raises(RuntimeError):
        night(day_store, tiny_dir, dreamer_home, fake_judge)
    run = ledger.runs(day_store)[0]
    assert run["status"] == "failed" and "disk full" in run["reason"]
    assert day_store.unconsolidated_count() == 3


def test_a_full_disk_while_saving_fails_the_night_and_loses_nothing(day_store, tiny_dir, dreamer_home, fake_judge,
                                                                    monkeypatch):
    import errno

    from dreamer.morning import stack

    monkeypatch.setattr(gate_stage, "measure", lambda *a, **k: dict(GOOD_FIGURES))
    save = stack.save_candidate

    def save_then_full(model, directory, metadata):
        save(model, directory, metadata)  # half the night's files are on disk when the disk fills
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "adapter_model.safetensors"))

    monkeypatch.setattr(stack, "save_candidate", save_then_full)
    with pytest.raises(OSError, match="No space left"):
        night(day_store, tiny_dir, dreamer_home, fake_judge)
    assert ledger.runs(day_store)[0]["status"] == "failed" and day_store.unconsolidated_count() == 3
    assert not [p for p in (dreamer_home / "adapters").iterdir() if p.is_dir()]  # the partial expert is gone
    assert read_manifest(dreamer_home)["version"] == 0


def test_second_sleep_is_refused(day_store, tiny_dir, dreamer_home, fake_judge, monkeypatch):
    import dreamer.sleep.lock

    monkeypatch.setattr(dreamer.sleep.lock, "LOCK_WAIT_SECONDS", 0.3)  # it waits that long for a recovery pass
    holding, release = threading.Event(), threading.Event()

    def hold():
        with sleep_lock(dreamer_home):
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(5)
    try:
        with pytest.raises(SleepBusy, match="already running"):
            night(day_store, tiny_dir, dreamer_home, fake_judge)
    finally:
        release.set()
        thread.join()
    assert ledger.runs(day_store) == []


def test_nothing_to_consolidate_and_dry_run(store, day_store, tiny_dir, dreamer_home, fake_judge):
    outcome = night(day_store, tiny_dir, dreamer_home, fake_judge, dry_run=True)
    assert outcome.status == "dry-run" and "1 conversation, 3 messages (2 of them yours)" in outcome.message
    assert ledger.runs(day_store) == []
    outcome = night(day_store, tiny_dir, dreamer_home, fake_judge, day="2001-01-01")
    assert outcome.status == "nothing" and "nothing to consolidate on 2001-01-01" in outcome.message


def test_adapter_for_another_base_is_refused(tiny_dir, tmp_path):
    base, _ = load_base(str(tiny_dir), plan_device(LoadConfig()))
    other = build_stack(base, [], DistillConfig(rank=4))
    save_candidate(other, tmp_path / "alien", {"base": {"model_type": "llama", "hidden_size": 4096}})
    base, _ = load_base(str(tiny_dir), plan_device(LoadConfig()))
    with pytest.raises(AdapterMismatch, match="trained on another base model"):
        build_stack(base, [tmp_path / "alien"], None)
    (tmp_path / "alien" / "metadata.json").unlink()
    with pytest.raises(AdapterMismatch, match="no metadata.json"):
        build_stack(base, [tmp_path / "alien"], None)


def test_nf4_path_trains_the_expert(tiny_dir):
    """The QLoRA path (bitsandbytes NF4 base) on CPU: slow there, so only two steps."""
    plan = plan_device(LoadConfig(device="cpu", quantization="nf4"))
    base, tokenizer = load_base(str(tiny_dir), plan)
    assert type(base.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    model = build_stack(base, [], DistillConfig(rank=4))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ask = [{"role": "user", "content": "Where does Ana live?"}]
    today = [Example("today", ask, [{"role": "system", "content": "Ana lives in Lisbon."}] + ask, None, ["In Lisbon."])]
    cfg = DistillConfig(steps=2, batch_size=1, alpha=1.0, lmbda=0.0, rank=4, learning_rate=1e-2)
    distill(model, tokenizer, today=today, replay=[], anchor=[], documents=[], stack=[], cfg=cfg, max_len=64,
            judge=None, rng=random.Random(0))
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_a_small_change_merged_into_nf4_is_erased_and_kept_in_bf16(tiny_dir):
    """What benchmarks/nf4_merge.py measures rests on two things: its NF4 rounding is exactly what
    load_base holds in NF4, and a small change (a tenth of NF4's mean rounding error, a few hundredths
    of its grid step: a night moves a Q4_1 block by 0.020-0.025 of its step, benchmarks/fold_rms)
    added to NF4 weights is lost when they are quantized again and kept when they stay in bf16."""
    from bitsandbytes.functional import dequantize_4bit

    from benchmarks.nf4_merge import nf4_round, quantized_layers

    fp32 = dict(load_base(str(tiny_dir), plan_device(LoadConfig(device="cpu")))[0].named_modules())
    nf4 = dict(load_base(str(tiny_dir), plan_device(LoadConfig(device="cpu", quantization="nf4")))[0].named_modules())
    names = quantized_layers(fp32[""])
    assert names and "lm_head" not in names
    for name in names:
        held = nf4[name].weight
        assert torch.equal(dequantize_4bit(held.data, held.quant_state).float(), nf4_round(fp32[name].weight.detach()))

    weight = fp32[names[-1]].weight.detach()
    base = nf4_round(weight)
    torch.manual_seed(0)
    change = 0.1 * (base - weight).abs().mean() * torch.randn_like(weight)

    def kept(merged: torch.Tensor) -> float:  # the share of the change the merged weights carry
        return float(((merged - base) * change).sum() / (change * change).sum())

    assert kept(nf4_round(base + change)) < 0.25
    assert kept((base + change).to(torch.bfloat16).float()) > 0.9


def test_prompt_cache_changes_nothing_but_speed(tiny_dir):
    from dreamer.sleep.seeding.distill import reply_logits, teacher_logits
    from dreamer.lm.generation import sample
    from dreamer.lm.generation import chat_ids
    from dreamer.lm.prompt_cache import PromptCache

    base, tokenizer = load_base(str(tiny_dir), plan_device(LoadConfig()))
    model = build_stack(base, [], DistillConfig(rank=4))
    model.eval()
    day = [{"role": "system", "content": "You are dreamer. The user said: my sister Ana lives in Lisbon. " * 6},
           {"role": "user", "content": "Where does Ana live?"}]
    cache = PromptCache(tokenizer)
    plain = sample(model, tokenizer, day, [], n=1, max_new_tokens=10, temperature=None)
    assert sample(model, tokenizer, day, [], n=1, max_new_tokens=10, temperature=None, cache=cache) == plain
    assert len(sample(model, tokenizer, day, [], n=3, max_new_tokens=5, temperature=0.7, cache=cache)) == 3
    assert len(cache.entries) == 1
    reply = tokenizer("She lives in Lisbon.", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        full = reply_logits(model, chat_ids(tokenizer, day), reply)
        cached = teacher_logits(model, cache, day, [], reply)
    assert torch.allclose(full, cached, atol=1e-4)


def test_batched_generation_matches_one_at_a_time(tiny_dir):
    from dreamer.lm.generation import sample, sample_many
    from dreamer.lm.prompt_cache import PromptCache

    base, tokenizer = load_base(str(tiny_dir), plan_device(LoadConfig()))
    system = {"role": "system", "content": "You are dreamer. The user said: my cat Miso sleeps all day. " * 5}
    questions = ["Where?", "What is the name of my cat, please tell me?", "Who sleeps all day in my home?"]
    chats = [[system, {"role": "user", "content": q}] for q in questions]
    alone = [sample(base, tokenizer, c, None, n=1, max_new_tokens=8, temperature=None) for c in chats]
    shared = sample_many(base, tokenizer, chats, None, n=1, max_new_tokens=8, temperature=None,
                         cache=PromptCache(tokenizer))  # prefix cached, padding between prefix and question
    left = sample_many(base, tokenizer, [c[1:] for c in chats], None, n=1, max_new_tokens=8, temperature=None)
    assert shared == alone
    assert left == [sample(base, tokenizer, c[1:], None, n=1, max_new_tokens=8, temperature=None) for c in chats]


def test_a_model_too_big_names_the_preset(monkeypatch, tiny_dir):
    import dreamer.lm.weights as weights

    def too_big(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(weights.AutoModelForCausalLM, "from_pretrained", too_big)
    with pytest.raises(SleepConfigError, match="does not fit in memory with this preset: use --preset cpu-tiny"):
        load_base(str(tiny_dir), plan_device(LoadConfig()))


def test_the_same_seed_gives_the_same_night(tiny_dir, tmp_path, fake_judge):
    """What a refactor is checked by: the same day and seed give the same metrics (timings aside).
    The move to packages by phase was checked so, before against after, on this night."""
    from storage import Store

    def one_night(home):
        store = Store(home / "dreamer.db")
        conversation = store.new_conversation()
        store.add_message(conversation, "user", "My sister Ana lives in Lisbon and works as a pilot.")
        store.add_message(conversation, "user", "My cat is called Miso.")
        metrics = dict(night(store, tiny_dir, home, fake_judge).metrics)
        for timing in ("phase_seconds", "seconds", "peak_memory_mb", "export_seconds"):
            metrics.pop(timing, None)
        metrics["training"].pop("seconds")
        return metrics

    assert one_night(tmp_path / "a") == one_night(tmp_path / "b")


def test_the_turns_are_collected_under_the_lock(day_store, tiny_dir, dreamer_home, fake_judge, monkeypatch):
    """A sleep that waits for the lock collects what waits when it gets it, not what waited before:
    a turn told meanwhile is consolidated, and no turn can be taken by two nights."""
    import dreamer.sleep.lock

    monkeypatch.setattr(gate_stage, "measure", lambda *a, **k: dict(GOOD_FIGURES))
    monkeypatch.setattr(dreamer.sleep.lock, "LOCK_WAIT_SECONDS", 30)
    holding, release = threading.Event(), threading.Event()

    def hold_then_talk():
        with sleep_lock(dreamer_home):
            holding.set()
            release.wait(30)
            conversation = day_store.new_conversation()
            day_store.add_message(conversation, "user", "My dog is called Rex.")  # told while the sleep waited

    thread = threading.Thread(target=hold_then_talk)
    thread.start()
    holding.wait(5)
    threading.Timer(0.5, release.set).start()
    try:
        outcome = night(day_store, tiny_dir, dreamer_home, fake_judge)
    finally:
        release.set()
        thread.join()
    assert outcome.status == "promoted" and day_store.unconsolidated_count() == 0  # Rex too


def test_dry_run_estimates_from_this_homes_nights(store):
    from dreamer.sleep.estimate import estimate_night
    from storage import ledger

    embedded, other = Config(), Config(model="/models/big.gguf")
    assert "reference 2-core Intel Xeon" in estimate_night(store, "cpu-tiny", 100, embedded)
    assert estimate_night(store, "cpu-tiny", 100, other).startswith("no time estimate yet")
    for seconds, distilling, peak in ((700, 600, 2000.0), (900, 800, 2500.0)):
        run = ledger.start_run(store, "2026-11-21", "cpu-tiny")
        ledger.finish_run(store, run, "promoted", metrics={
            "seconds": seconds, "phase_seconds": {"distil into a new expert": distilling}, "training": {"steps": 100},
            "peak_memory_mb": peak, "model": "/models/big.gguf|"})
    # fixed part: median(100, 100) s; a step: median(6, 8) = 7 s; 200 steps -> 100 + 1400 s = 25 min
    assert estimate_night(store, "cpu-tiny", 200, other) == (
        "about 25 min and 2.4 GB peak memory (from the last 2 nights of cpu-tiny in this home)")
    # another model's nights say nothing about this one's
    assert "reference 2-core Intel Xeon" in estimate_night(store, "cpu-tiny", 100, embedded)
