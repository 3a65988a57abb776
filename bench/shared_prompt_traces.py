#!/usr/bin/env python3
"""Writes Mooncake-format traces (JSONL: timestamp in ms, input_length,
output_length, hash_ids of 512-token blocks) in which requests with the
same prompt arrive together, for kvrt-sim --trace: what
shared_prefill_min_tokens is for (docs/scheduler.md, "Prompts sharing a
prefix"). Deterministic (seed 7).

  grpo.jsonl        RL rollouts: every 30 s, 64 prompts x 8 samples at once,
                    each prompt one shared instruction block and 1-4 of its own
  chat_n4.jsonl     chat with parallel sampling (n = 4): 2 prompts/s, Poisson,
                    4 system prompts of 2 blocks, 1-6 blocks of its own
  cold_burst.jsonl  600 requests in the first second over 8 new system
                    prompts of 3 blocks, 1-4 blocks of their own
  fewshot.jsonl     one 6-block few-shot prefix, 20 requests/s, one block each
  long_copies.jsonl 200 copies of one 32,768-token prompt at once, 16 outputs

usage: shared_prompt_traces.py OUT_DIR
"""
import json
import os
import random
import sys


class Blocks:
    """Fresh hash ids, above the ids any shipped trace uses at position 0."""

    def __init__(self):
        self.next = 1000

    def take(self, k):
        ids = list(range(self.next, self.next + k))
        self.next += k
        return ids


def request(ms, ids, rng, output):
    # The last block is partial: up to 400 of its 512 tokens missing.
    return {"timestamp": int(ms), "input_length": 512 * len(ids) - rng.randint(0, 400),
            "output_length": output, "hash_ids": ids}


def grpo(rng, blocks):
    instruction = blocks.take(1)
    out = []
    for batch in range(12):
        for _ in range(64):
            ids = instruction + blocks.take(rng.randint(1, 4))
            first = request(batch * 30000, ids, rng, 0)
            for _ in range(8):
                out.append(dict(first, output_length=rng.randint(100, 1000)))
    return out


def chat_n4(rng, blocks):
    systems = [blocks.take(2) for _ in range(4)]
    out, ms = [], 0.0
    for _ in range(1500):
        ms += rng.expovariate(2.0) * 1000
        first = request(ms, rng.choice(systems) + blocks.take(rng.randint(1, 6)), rng, 0)
        for _ in range(4):
            out.append(dict(first, output_length=rng.randint(50, 600)))
    return out


def cold_burst(rng, blocks):
    systems = [blocks.take(3) for _ in range(8)]
    return [request(rng.randint(0, 1000), rng.choice(systems) + blocks.take(rng.randint(1, 4)),
                    rng, rng.randint(50, 600)) for _ in range(600)]


def fewshot(rng, blocks):
    shots = blocks.take(6)
    out, ms = [], 0.0
    for _ in range(2000):
        ms += rng.expovariate(20.0) * 1000
        out.append(request(ms, shots + blocks.take(1), rng, rng.randint(1, 20)))
    return out


def long_copies(rng, blocks):
    ids = blocks.take(64)
    return [{"timestamp": 0, "input_length": 512 * len(ids), "output_length": 16,
             "hash_ids": ids} for _ in range(200)]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    os.makedirs(sys.argv[1], exist_ok=True)
    rng, blocks = random.Random(7), Blocks()
    for make in (grpo, chat_n4, cold_burst, fewshot, long_copies):
        rows = sorted(make(rng, blocks), key=lambda r: r["timestamp"])
        path = os.path.join(sys.argv[1], make.__name__ + ".jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print("%s: %d requests" % (path, len(rows)))


if __name__ == "__main__":
    main()
