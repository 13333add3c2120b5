"""Multiple-choice scoring on the embedded model: the prompt encoded once per option (the old way)
against once for all options (dreamer.lm.scoring.tail_logprobs), alternated on one machine.

    python -m benchmarks.option_scoring [--reps 10]   # writes benchmarks/results/option_scoring.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.machine import cpu_model
from dreamer.lm.scoring import model_device, pad_id, right_padded, tail_logprobs
from dreamer.lm.weights import load_base, plan_device, training_source
from dreamer.sleep.config import LoadConfig
from storage.paths import cache_dir

SYSTEM = "You are dreamer, a personal assistant that remembers what the user tells you. Today is Tuesday 2025-03-04."
QUESTION = 'Which word is missing from what I told you? "My sister moved to ___ last spring."'
OPTIONS = ["Rotterdam", "Lisbon", "Porto", "Oslo"]


def per_option(model, tokenizer, prompt, tails):
    """The scoring before: prompt + option encoded whole, one right-padded row per option."""
    ids, mask = right_padded([prompt + tail for tail in tails], pad_id(tokenizer), model_device(model))
    logprobs = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    start = len(prompt) - 1
    return [logprobs[row, start:start + len(t)].gather(-1, torch.tensor(t)[:, None]).squeeze(-1)
            for row, t in enumerate(tails)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    model, tokenizer = load_base(training_source("", cache_dir()), plan_device(LoadConfig(device="cpu")))
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
                                           add_generation_prompt=True, tokenize=True, return_dict=False)
    tails = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in OPTIONS]
    seconds = {"per_option": [], "shared_prompt": []}
    scores = {}
    with torch.no_grad():
        for _ in range(args.reps):
            for name, fn in (("per_option", per_option), ("shared_prompt", tail_logprobs)):
                start = time.perf_counter()
                out = fn(model, tokenizer, prompt, tails)
                seconds[name].append(time.perf_counter() - start)
                scores[name] = [round(x.mean().item(), 4) for x in out]
    result = {"command": "python -m benchmarks.option_scoring", "cpu": cpu_model(), "loadavg": os.getloadavg()[0],
              "prompt_tokens": len(prompt), "options": len(OPTIONS), "reps": args.reps, "scores": scores,
              "median_s": {k: round(sorted(v)[len(v) // 2], 3) for k, v in seconds.items()}}
    out = Path(__file__).parent / "results" / "option_scoring.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
