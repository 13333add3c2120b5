"""Integration tests on the embedded SmolLM2-135M-Instruct: real llama.cpp chat, real sleep.

Slow on a CPU (a few minutes together); `pytest -m "not integration"` skips them.
"""

import threading

import pytest

from agent.models import embedded_gguf_path
from agent.runtime import Adapter
from agent.session import ChatSession
from storage import Config, ledger

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llama():
    from agent.llama_runtime import LlamaRuntime

    return LlamaRuntime(embedded_gguf_path(), name="embedded", n_ctx=2048)


def test_streams_a_real_reply_and_stores_it(store, llama):
    session = ChatSession(store, llama, Config(n_ctx=2048, max_reply_tokens=48, temperature=0.0))
    session.send("What is the capital of France? Answer in one word.")
    pieces = []
    reply = session.reply(on_token=pieces.append)
    assert len(pieces) > 1 and "Paris" in reply.text
    assert store.messages(session.conversation_id)[-1]["content"] == reply.text == "".join(pieces)


def test_stop_and_a_bad_adapter_keep_the_runtime_usable(store, llama):
    stop = threading.Event()
    pieces = []
    for piece in llama.stream([{"role": "user", "content": "Count from one to fifty."}], max_tokens=200,
                              temperature=0.0, stop=stop):
        pieces.append(piece)
        if len(pieces) == 3:
            stop.set()
    assert len(pieces) == 3
    from agent.models import ModelError

    with pytest.raises(ModelError, match="previous memory stays active"):
        llama.load_adapters([Adapter(store.path)])  # not a GGUF adapter
    assert llama.adapters == []
    again = "".join(llama.stream([{"role": "user", "content": "Say hello."}], max_tokens=16, temperature=0.0))
    assert again.strip()


def test_the_base_loads_without_repacked_weights_and_the_defaults_are_restored(llama):
    """Decoding on llama.cpp's repacked (AMX) weights segfaulted; the runtime loads plain buffers.

    The crash itself shows only on a CPU with AMX, where every test that decodes would hit it.
    """
    import llama_cpp

    assert not llama.llm.model_params.use_extra_bufts  # the parameters the runtime's model was loaded with
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts  # llama.cpp's default, restored


def test_a_short_real_night(store, dreamer_home):
    """One conversation, a few steps: the whole pipeline on the real model, whatever the gate says."""
    from dreamer.sleep.night import sleep_now
    from dreamer.sleep.config import sleep_config_from_dict

    conversation = store.new_conversation()
    store.add_message(conversation, "user", "My sister Ana lives in Lisbon and she is a pilot.")
    store.add_message(conversation, "assistant", "That sounds exciting! Lisbon is a beautiful city.")
    cfg = sleep_config_from_dict({
        "memories": {"questions_per_conversation": 3, "max_new_tokens": 24, "teacher_samples": 1},
        "distill": {"steps": 3, "batch_size": 2, "rl_every": 2, "rl_group": 2, "rl_new_tokens": 8},
        "load": {"max_seq_len": 256},
    }, preset="integration")
    outcome = sleep_now(store, Config(), cfg, home=dreamer_home)
    assert outcome.status in ("promoted", "rejected")
    run = ledger.runs(store)[0]
    assert run["status"] == outcome.status and "Morning report" in run["report"]
    assert outcome.metrics["gate"]["today_probes"] >= 0 and outcome.metrics["training"]["steps"] == 3
    if outcome.status == "promoted":
        assert store.unconsolidated_count() == 0 and ledger.adapters(store, "active")
    else:
        assert store.unconsolidated_count() == 2 and not ledger.adapters(store)
    assert (dreamer_home / "cache" / "smollm2-135m-instruct-f32" / "model.safetensors").is_file()
