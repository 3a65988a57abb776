#!/usr/bin/env python3
"""policy_traces.py - request traces of different shapes for judging
eviction policies with kvrt-replay (docs/tiers.md, "Policies").

Writes Mooncake-format JSON lines (timestamp, input_length, output_length,
hash_ids: one id per 512-token block, an id standing for the block and
every block before it), so kvrt-replay reads them like the shipped trace.
Deterministic for a given --seed. Shapes:

  conversation  kvrt-sim's synthetic workload: multi-turn conversations
                (geometric turns, log-normal lengths, exponential think
                time) sharing a few system prompts; a turn's prompt is the
                whole previous turn plus its answer and a new message.
  zipf          single-turn requests whose shared prefix (a system prompt
                or few-shot template of 1-16 blocks) is drawn from 2,000
                with Zipf(1.1) popularity, then a unique suffix.
  agentic       long-context agents: a few hundred sessions, each a growing
                context (tool results appended, 1-4 blocks a step) up to
                256 blocks, steps interleaved across sessions.
  scan          a hot set of 200 prefixes (uniform) mixed 1:1 with long
                one-off documents (32-128 unique blocks): the scan that
                flushes recency-only caches.

  policy_traces.py SHAPE OUT.jsonl [--requests N] [--seed S]
"""
import argparse
import json
import math
import random

BLOCK = 512


class Ids:
    """Maps a prefix to a small integer id, keyed by (parent id, content)."""

    def __init__(self):
        self.ids = {}

    def chain(self, contents):
        out, parent = [], -1
        for c in contents:
            parent = self.ids.setdefault((parent, c), len(self.ids))
            out.append(parent)
        return out


def lognormal(rng, mean, sigma=0.8):
    mu = math.log(mean) - sigma * sigma / 2
    return max(1, int(rng.lognormvariate(mu, sigma)))


def conversation(rng, n):
    systems = [[("sys", s, b) for b in range(lognormal(rng, 3, 0.5))] for s in range(8)]
    heap, reqs, t, conv = [], [], 0.0, 0
    import heapq
    while len(reqs) < n:
        # a new conversation starts every ~0.2 s; pending turns interleave
        t += rng.expovariate(5.0)
        sys = systems[rng.randrange(len(systems))]
        turns = min(1 + int(rng.expovariate(1 / 4.0)), 30)
        heapq.heappush(heap, (t, conv, list(sys), turns))
        conv += 1
        while heap and heap[0][0] <= t and len(reqs) < n:
            when, cid, ctx, left = heapq.heappop(heap)
            ctx = ctx + [("user", cid, len(ctx), i) for i in range(lognormal(rng, 2))]
            ctx = ctx[:200]
            reqs.append((when, ctx))
            ctx = ctx + [("answer", cid, len(ctx), i) for i in range(lognormal(rng, 1))]
            if left > 1:
                heapq.heappush(heap, (when + rng.expovariate(1 / 60.0), cid, ctx, left - 1))
    return reqs


def zipf(rng, n):
    weights = [1 / (k + 1) ** 1.1 for k in range(2000)]
    prefixes = [[("tpl", k, b) for b in range(rng.randint(1, 16))] for k in range(2000)]
    reqs = []
    for i in range(n):
        k = rng.choices(range(2000), weights)[0]
        reqs.append((i * 0.1, prefixes[k] + [("q", i, b) for b in range(lognormal(rng, 3))]))
    return reqs


def agentic(rng, n):
    sessions = [[("agent", s % 4, b) for b in range(8)] for s in range(300)]
    reqs = []
    for i in range(n):
        s = rng.randrange(len(sessions)) if rng.random() < 0.7 else i % len(sessions)
        ctx = sessions[s] + [("tool", s, i, b) for b in range(rng.randint(1, 4))]
        if len(ctx) > 256:  # the agent restarts from its instructions
            ctx = ctx[:8] + [("tool", s, i, b) for b in range(rng.randint(1, 4))]
        sessions[s] = ctx
        reqs.append((i * 0.5, ctx))
    return reqs


def scan(rng, n):
    hot = [[("hot", k, b) for b in range(rng.randint(2, 12))] for k in range(200)]
    reqs = []
    for i in range(n):
        if i % 2:
            ctx = [("doc", i, b) for b in range(rng.randint(32, 128))]
        else:
            ctx = hot[rng.randrange(200)] + [("q", i, b) for b in range(rng.randint(1, 3))]
        reqs.append((i * 0.1, ctx))
    return reqs


SHAPES = {"conversation": conversation, "zipf": zipf, "agentic": agentic, "scan": scan}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    ids = Ids()
    with open(a.out, "w") as f:
        for when, ctx in SHAPES[a.shape](rng, a.requests):
            row = {"timestamp": int(when * 1000), "input_length": len(ctx) * BLOCK,
                   "output_length": 100, "hash_ids": ids.chain(ctx)}
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
