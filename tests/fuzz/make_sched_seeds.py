#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_sched_api (tests/fuzz/corpus/sched_api):
one input per way an engine drives a scheduler, in the input format
fuzz_sched_api.c decodes (configuration, then operations). Run from
anywhere; rewrites the folder."""
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "sched_api")

# open_world's flags
TWO_GROUPS, CACHE, SPEC, ASYNC, ABRUPT_END = 1, 2, 4, 8, 16
# run_op's operation bytes (the byte modulo 12)
ADD, STEP, COMMIT, HOSTILE, ABORT, DRAFTS, DRAIN, LOOK, ARRIVAL = 0, 2, 4, 6, 7, 8, 9, 10, 11


def config(flags, tpb_sizes=3, blocks=60, tables=64, k=4, batch=64, seqs=8, requests=24,
           seq_tokens=100, chunk=32, windows=(16, 16), policy=0):
    """The 11 or 12 configuration bytes (k only when SPEC is set)."""
    b = [flags | (policy << 5), tpb_sizes, blocks - 4, tables - 2]
    if flags & SPEC:
        b.append(k - 1)
    b += [batch - 1, seqs - 1, requests - 1, (seq_tokens - 2) // 2, chunk - 1]
    b += list(windows[: 2 if flags & TWO_GROUPS else 1])
    return bytes(b)


def add(length, shared, seed=1, max_new=12, stops=0, priority=0, cache_flags=0,
        min_tokens=0, mask=0x7f, salt_bytes=0, shape=0, items=()):
    """kvrt_seq_add: a prompt of `length` tokens whose first `shared` are
    the common prefix, the rest drawn from `seed`; multimodal items as
    (gap after the previous one, length)."""
    keys = (2 if salt_bytes else 0) | (4 if items else 0)
    item_bytes = b"".join(bytes([9, gap, n]) for gap, n in items)
    return bytes([ADD, shape, length - 1, shared, seed & 0xff, mask, max_new, stops,
                  priority & 0xff, 200, cache_flags, min_tokens,
                  1, 2, 3, 4,  # stop tokens
                  keys, 0, salt_bytes, len(items), 7]) + item_bytes


def step(dt=1):
    return bytes([STEP, dt])


def commit(seed=1, drafts=False):
    return bytes([COMMIT, (1 if drafts else 0) | (seed << 1 & 0xfe), seed])


def hostile(wrong, seed=3):
    return bytes([HOSTILE, 1 | (wrong << 1), seed])


def cycle(n, drafts=False):
    return b"".join(step() + commit(i, drafts) for i in range(n))


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        os.remove(os.path.join(OUT, name))
    rnd = random.Random(7)
    seeds = {}
    adds = b"".join(add(rnd.randint(8, 90), rnd.randint(0, 40), seed=i) for i in range(8))
    seeds["plain"] = config(0) + adds + cycle(40) + bytes([DRAIN, 8, 0]) * 4
    seeds["cache_shared_prefixes"] = (config(CACHE) + adds + cycle(30) + adds + cycle(30)
                                      + bytes([LOOK, 0, 0, 0]) + bytes([DRAIN, 8, 0]) * 4)
    seeds["cache_reset_busy_and_idle"] = (config(CACHE, policy=4) + adds + cycle(10)
                                          + bytes([LOOK, 1, 0, 0x08]) + cycle(40)
                                          + bytes([LOOK, 1, 0, 0]))
    seeds["tight_pool_preemption"] = (config(CACHE, blocks=12, tpb_sizes=2) + adds
                                      + b"".join(add(40, 0, priority=p, seed=p)
                                                 for p in (5, -3, 9))
                                      + cycle(60))
    seeds["speculation_commit_drafts"] = (config(CACHE | SPEC) + adds
                                          + cycle(40, drafts=True))
    seeds["speculation_set_drafts"] = (config(SPEC, k=3) + adds + cycle(12)
                                       + b"".join(bytes([DRAFTS, 1, 2, 3, i, 4, i + 1, 3])
                                                  + step() + commit(i) for i in range(20)))
    seeds["async_two_plans"] = (config(CACHE | ASYNC | SPEC) + adds
                                + b"".join(step() + step() + commit(i, True) + commit(i + 1)
                                           for i in range(20)))
    seeds["async_abort_in_flight"] = (config(ASYNC) + adds + step() + step()
                                      + bytes([ABORT, 0, ABORT, 1]) + commit() + commit()
                                      + cycle(10) + bytes([DRAIN, 8, 0]))
    seeds["hybrid_sliding_window"] = (config(TWO_GROUPS | CACHE, tpb_sizes=0b0110,
                                             windows=(0, 9))
                                      + adds + cycle(50))
    seeds["arrivals"] = (config(CACHE) + adds
                         + b"".join(bytes([ARRIVAL, 1, 0, 30 + i, 200, i])
                                    + bytes([ARRIVAL, 0, i, i % 5, 0, 0]) for i in range(6))
                         + cycle(30))
    seeds["hostile_commits"] = (config(CACHE | SPEC) + adds + cycle(6, drafts=True)
                                + b"".join(step() + hostile(w) + commit(w, True)
                                           for w in range(6)))
    seeds["bad_requests"] = (config(CACHE) + add(10, 0, shape=1) + add(10, 0, shape=2)
                             + add(10, 0, shape=4) + add(10, 0, shape=8)
                             + add(10, 0, salt_bytes=70)
                             + add(10, 0, min_tokens=20, max_new=5) + cycle(4))
    seeds["stops_and_min_tokens"] = (config(0) + b"".join(
        add(12, 0, seed=i, stops=3, min_tokens=i, max_new=30) for i in range(6)) + cycle(60))
    seeds["ngram_proposer"] = (config(SPEC | CACHE, tpb_sizes=3 | 0x10 | 0x80, k=4)
                               + b"".join(add(40, 40, seed=i, max_new=30) for i in range(4))
                               + cycle(40))
    seeds["arrival_deadlines_and_groups"] = (
        config(TWO_GROUPS | CACHE | ASYNC, tpb_sizes=0b0110, windows=(0, 9)) + adds
        + b"".join(bytes([ARRIVAL, 1, 3, 20 + i, 2, i]) + step(5) for i in range(4))
        + b"".join(bytes([ARRIVAL, 0, i, 3, i % 2, 1]) for i in range(4)) + cycle(20))
    seeds["abrupt_destroy_in_flight"] = (config(CACHE | ASYNC | ABRUPT_END) + adds + cycle(6)
                                         + bytes([ARRIVAL, 1, 0, 30, 200, 7]) + step() + step())
    seeds["multimodal_items"] = (config(CACHE, batch=40, chunk=16, seq_tokens=200)
                                 + b"".join(add(120, 0, seed=i, items=((5 + i, 30), (3, 12)))
                                            for i in range(4))
                                 + cycle(40))
    seeds["few_tables"] = config(CACHE | ASYNC, tables=5) + adds + cycle(20) + adds + cycle(20)
    # 32 running that end at different steps (lengths, aborts): holes the
    # running array keeps, then admissions into a full array.
    many = b"".join(add(rnd.randint(6, 14), 4, seed=i, max_new=3 + (i * 7) % 23)
                    for i in range(32))
    seeds["many_running_ends"] = (config(CACHE, blocks=259, tables=64, seqs=32, requests=40,
                                         batch=256)
                                  + many + cycle(6) + bytes([ABORT, 3, ABORT, 9])
                                  + many[:8 * len(many) // 32] + cycle(36)
                                  + bytes([DRAIN, 8, 0]) * 6)
    # One prompt added many times, then prompts sharing 60 tokens: with
    # blocks % 4 != 0 shared_prefill_min_tokens is 1 + tables % 40 (25
    # here), so requests wait for blocks others compute (in chunks of 16).
    same = b"".join(add(80, 80, seed=i) for i in range(6))
    near = b"".join(add(90, 60, seed=10 + i) for i in range(4))
    seeds["shared_prompts_wait"] = (config(CACHE, blocks=61, chunk=16) + same + cycle(30)
                                    + near + cycle(30) + bytes([DRAIN, 8, 0]) * 2)
    seeds["shared_prompts_wait_async"] = (config(CACHE | ASYNC, blocks=61, chunk=16) + same
                                          + b"".join(step() + step() + commit(i) + commit(i + 1)
                                                     for i in range(15))
                                          + near + cycle(30))
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
