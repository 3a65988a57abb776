#!/usr/bin/python3
"""An engine that serves TinyLlama through kvrt, and checks every answer
against the unpaged reference.

Each iteration is what a real engine does:
  1. kvrt_sched_step: a batch plan (continuous batching, chunked prefill,
     prefix-cache hits already adopted, preemptions decided, n-gram drafts
     proposed); the engine's copy of the block-table rows takes the rows
     the plan lists as changed;
  2. run the plan's block copies, then the model over the plan's tokens:
     K/V of the new tokens go into kvrt's paged cache with the write kernel
     through slot_mapping, and each sequence's attention context is read
     back through its block-table row (block_rows) with the read kernel;
  3. sample greedily; for speculative entries, verify the drafts (accept the
     longest prefix the model agrees with, plus one bonus token); one-token
     entries also go through kvrt's paged decode-attention kernel as a
     cross-check;
  4. kvrt_sched_commit, then drain the requests that ended.

    python3 python/examples/serve.py [--device cuda] [--requests N] [--json]

Needs libkvrt (KVRT_LIBRARY=build/libkvrt.so, or installed) and torch.
"""
import argparse
import json
import os
import random
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import kvrt  # noqa: E402
from tiny_llama import Config, TinyLlama, reference_generate  # noqa: E402


def make_workload(n_requests, vocab, seed):
    """Requests sharing a few system prompts, arriving over the first steps."""
    rng = random.Random(seed)
    systems = [[rng.randrange(1, vocab) for _ in range(rng.randrange(20, 36))]
               for _ in range(3)]
    requests = []
    for i in range(n_requests):
        user = [rng.randrange(1, vocab) for _ in range(rng.randrange(3, 14))]
        requests.append(dict(tag=i, prompt=systems[i % len(systems)] + user,
                             max_new=rng.randrange(10, 28), arrive_step=rng.randrange(0, 30),
                             stop=(vocab - 1,)))
    return requests


class Group:
    """One cache group: the layers that share a block size and an attention
    span, with their own pool, paged KV memory and prefix cache, or those
    of the group `shares` (as many layers, one block size: one memory)."""

    def __init__(self, ctx, model, layers, num_blocks, tokens_per_block, window, device,
                 name, shares=None):
        c = model.cfg
        self.layers, self.tpb, self.window = layers, tokens_per_block, window
        self.rows = None  # the engine's copy of the block-table rows
        if shares is not None:
            assert len(shares.layers) == len(layers) and shares.tpb == tokens_per_block
            self.pool, self.kv, self.cache = shares.pool, shares.kv, shares.cache
            return
        layout = kvrt.Layout(len(layers), c.kv_heads, c.head_dim, tokens_per_block,
                             dtype="float16")
        if device == "cuda":
            # The engine owns GPU memory and lends it to kvrt.
            self.kv_memory = torch.zeros(layout.block_bytes * num_blocks, dtype=torch.uint8,
                                         device="cuda")
            self.pool = kvrt.Pool(ctx, layout, num_blocks, base=self.kv_memory.data_ptr(),
                                  base_bytes=self.kv_memory.numel())
            self.kv = kvrt.KVCache(self.pool, base=self.kv_memory, device="cuda")
        else:
            self.pool = kvrt.Pool(ctx, layout, num_blocks)  # host memory from kvrt
            self.kv = kvrt.KVCache(self.pool)
        self.cache = kvrt.PrefixCache(self.pool, model_id=name)

    def mirror_rows(self, part, changed):
        """The group's block-table rows as an engine keeps them on its device:
        a copy, updated only in the rows the plan says changed."""
        if self.rows is None:
            self.rows = np.zeros_like(part.block_rows)
        self.rows[changed] = part.block_rows[changed]
        return self.rows

    def context_slots(self, row, lo, length):
        """KV slots of positions [lo, length) of the sequence whose block-table
        row (in this group) is `row`; every block they lie in must be held."""
        pos = np.arange(lo, length)
        blocks = row[pos // self.tpb].astype(np.int64)
        if (blocks == kvrt.NULL_BLOCK).any():
            raise RuntimeError("a block the attention reads was released")
        return blocks * self.tpb + pos % self.tpb


class Engine:
    def __init__(self, model, args):
        c = model.cfg
        self.model, self.device = model, args.device
        self.ctx = kvrt.Context(name="tiny-llama")
        full = [layer for layer in range(c.layers) if not c.window_of(layer)]
        windowed = [layer for layer in range(c.layers) if c.window_of(layer)]
        self.groups = [Group(self.ctx, model, full, args.blocks, args.block_tokens, 0,
                             args.device, "tiny-llama-seed%d" % args.seed)]
        if windowed and args.shared_kv:  # a hybrid model, both groups in one pool
            self.groups.append(Group(self.ctx, model, windowed, 0, args.block_tokens,
                                     c.sliding_window, args.device, None,
                                     shares=self.groups[0]))
        elif windowed:  # a hybrid model: one more cache group, over the window
            self.groups.append(Group(self.ctx, model, windowed, args.window_blocks,
                                     args.window_block_tokens, c.sliding_window, args.device,
                                     "tiny-llama-seed%d-window" % args.seed))
        self.group_of = {}  # layer -> (group, its index among the group's layers)
        for g, group in enumerate(self.groups):
            for i, layer in enumerate(group.layers):
                self.group_of[layer] = (g, i)
        params = dict(max_batch_tokens=args.max_batch_tokens, max_seqs=args.max_seqs,
                      prefill_chunk_tokens=args.chunk, max_draft_tokens=args.spec_k,
                      ngram=(1, 3), shared_prefill_min_tokens=args.shared_prefill,
                      max_plans_in_flight=2 if args.two_plans_in_flight else 1)
        if len(self.groups) == 1:
            self.sched = kvrt.Scheduler(self.groups[0].pool, self.groups[0].cache, **params)
        else:
            self.sched = kvrt.Scheduler(groups=[
                kvrt.CacheGroup(g.pool, g.cache, sliding_window=g.window)
                for g in self.groups], **params)
        self.attention_error = 0.0  # kvrt's paged decode kernel against the model
        self.attention_checks = 0
        self.window_released = 0  # most blocks of one request released out of the window
        self.two_in_flight = args.two_plans_in_flight
        self.placeholders = 0  # decode inputs planned before their token was sampled

    def run_plan(self, plan, sampled):
        """Runs the model on the plan; returns (tokens, num_accepted) to commit.
        sampled maps a request id to the last token sampled for it (the
        placeholders' tokens), and is updated."""
        m, c = self.model, self.model.cfg
        parts = plan.groups
        for group, part in zip(self.groups, parts):
            group.kv.copy_blocks(part.copies)
        rows = [group.mirror_rows(part, plan.rows_changed)
                for group, part in zip(self.groups, parts)]
        slots = [part.slot_mapping for part in parts]
        positions, starts = plan.positions, plan.query_start_loc
        seqs, seq_lens, row_of = plan.seqs, plan.seq_lens, plan.row_index
        tokens = plan.input_tokens.copy()
        for i in np.flatnonzero(tokens[starts[:-1]] == kvrt.TOKEN_PLACEHOLDER):
            tokens[starts[i]] = sampled[int(seqs[i]["id"])]
            self.placeholders += 1
        x = [m.embed_token(t) for t in tokens]
        decodes = [i for i in range(len(seqs)) if seqs[i]["num_new_tokens"] == 1]
        for layer in range(c.layers):
            g, index = self.group_of[layer]
            group, w = self.groups[g], c.window_of(layer)
            qkv = [m.qkv(layer, x[t], int(positions[t])) for t in range(len(tokens))]
            keys = torch.stack([k for _, k, _ in qkv])
            values = torch.stack([v for _, _, v in qkv])
            group.kv.write(index, slots[g], keys, values)
            attn_of = {}
            for i in range(len(seqs)):
                n = int(seq_lens[i])
                # A window layer reads from the first query's window on.
                lo = max(0, int(positions[starts[i]]) + 1 - w) if w else 0
                row = rows[g][row_of[i]]
                if w and layer == group.layers[0]:
                    self.window_released = max(self.window_released, int(
                        (row[:lo // group.tpb] == kvrt.NULL_BLOCK).sum()))
                ctx_k = torch.empty(n - lo, c.kv_heads, c.head_dim, device=self.device)
                ctx_v = torch.empty_like(ctx_k)
                group.kv.read(index, group.context_slots(row, lo, n), ctx_k, ctx_v)
                for t in range(starts[i], starts[i + 1]):
                    p = int(positions[t])
                    first = max(0, p + 1 - w) - lo if w else 0
                    attn = m.attend(qkv[t][0], ctx_k[first:p + 1 - lo], ctx_v[first:p + 1 - lo])
                    attn_of[t] = attn
                    x[t] = m.finish_layer(layer, x[t], attn)
            if decodes and not w:
                self.check_decode_kernel(group, index, plan, rows[g], decodes, qkv, attn_of)
        out, accepted = [], []
        for i, seq in enumerate(seqs):
            last = int(starts[i + 1])
            if not seq["sample"]:
                accepted.append(0)
                continue
            if seq["kind"] == kvrt.PLAN_SPEC:
                d = int(seq["num_drafts"])
                drafts = [int(t) for t in tokens[last - d:last]]
                # Greedy verification: the model's choice after each prefix.
                choices = [m.next_token(x[t]) for t in range(last - d - 1, last)]
                a = 0
                while a < d and choices[a] == drafts[a]:
                    a += 1
                out += drafts[:a] + [choices[a]]
                accepted.append(a)
            else:
                out.append(m.next_token(x[last - 1]))
                accepted.append(0)
            sampled[int(seq["id"])] = out[-1]
        return out, accepted

    def check_decode_kernel(self, group, index, plan, rows, decodes, qkv, attn_of):
        """Runs kvrt's paged decode-attention kernel over the same block-table
        rows (float32) and records how far it is from the model's float64
        attention. Not used for sampling: the model's numerics are float64."""
        c = self.model.cfg
        starts, row_of = plan.query_start_loc, plan.row_index
        tokens = [int(starts[i]) for i in decodes]
        query = torch.stack([qkv[t][0] for t in tokens]).to(torch.float32).contiguous()
        out = torch.empty_like(query)
        group.kv.decode_attention(index, query, rows[row_of[decodes]],
                                  plan.seq_lens[decodes], out)
        want = torch.stack([attn_of[t] for t in tokens]).view(len(tokens), c.heads, c.head_dim)
        self.attention_checks += len(tokens)
        self.attention_error = max(self.attention_error,
                                   float((out.double() - want).abs().max()))

    def serve(self, requests):
        """Serves requests to the end. With two plans in flight (--async), a
        step is planned before the previous plan is committed, as the model
        would still be running it: its decodes read KVRT_TOKEN_PLACEHOLDER,
        replaced here by the token the previous plan sampled."""
        pending = sorted(requests, key=lambda r: r["arrive_step"])
        results, step, live = {}, 0, 0
        in_flight, sampled = None, {}  # the plan not yet committed; last tokens by id
        while pending or live or in_flight:
            while pending and pending[0]["arrive_step"] <= step:
                r = pending.pop(0)
                self.sched.add(r["prompt"], r["max_new"], stop=list(r["stop"]),
                               user_tag=r["tag"])
                live += 1
            plan = self.sched.step(now_ns=step)
            step += 1
            if in_flight:
                previous, tokens, accepted = in_flight
                self.sched.commit(previous, tokens, num_accepted=accepted)
                in_flight = None
            if len(plan):
                tokens, accepted = self.run_plan(plan, sampled)
                if self.two_in_flight:
                    in_flight = (plan, tokens, accepted)
                else:
                    self.sched.commit(plan, tokens, num_accepted=accepted)
            for event in self.sched.drain():
                results[event["user_tag"]] = event
                live -= 1
            if step > 100000:
                raise RuntimeError("the engine did not finish")
        for group in self.groups:
            group.pool.verify()  # (a shared pool twice)
        return results, step

    def close(self):
        self.ctx.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--blocks", type=int, default=40, help="KV blocks (small: preemptions)")
    ap.add_argument("--block-tokens", type=int, default=8)
    ap.add_argument("--max-batch-tokens", type=int, default=96)
    ap.add_argument("--max-seqs", type=int, default=12)
    ap.add_argument("--chunk", type=int, default=24, help="longest prefill chunk")
    ap.add_argument("--spec-k", type=int, default=4, help="n-gram drafts per step (0: off)")
    ap.add_argument("--shared-prefill", type=int, default=None,
                    help="a request waits for N+ tokens of its prompt that another is "
                         "computing [kvrt's default]")
    ap.add_argument("--sliding-window", type=int, default=0,
                    help="a hybrid model: the first layer (every other one) attends over "
                         "the last W tokens only, in a cache group of its own [0: none]")
    ap.add_argument("--window-block-tokens", type=int, default=4,
                    help="tokens per block of the sliding-window group")
    ap.add_argument("--window-blocks", type=int, default=64,
                    help="KV blocks of the sliding-window group")
    ap.add_argument("--shared-kv", action="store_true",
                    help="the sliding-window group shares the full-attention group's pool "
                         "and prefix cache (--blocks of --block-tokens)")
    ap.add_argument("--async", dest="two_plans_in_flight", action="store_true",
                    help="asynchronous scheduling: each step is planned before the "
                         "previous plan is committed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    if args.shared_kv and not args.sliding_window:
        ap.error("--shared-kv needs --sliding-window")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no GPU")
    torch.set_num_threads(1)  # the same reduction order in every call
    config = Config()
    if args.sliding_window:
        config = Config(sliding_window=args.sliding_window,
                        window_layers=tuple(range(0, config.layers, 2)))
    model = TinyLlama(config, seed=args.seed, device=args.device)
    requests = make_workload(args.requests, model.cfg.vocab, args.seed)
    start = time.monotonic()
    engine = Engine(model, args)
    try:
        results, steps = engine.serve(requests)
        stats = engine.sched.stats()
        engine_error, engine_checks = engine.attention_error, engine.attention_checks
        window_released, placeholders = engine.window_released, engine.placeholders
        metrics = engine.ctx.metrics()
    finally:
        engine.close()
    serve_s = time.monotonic() - start
    mismatches, mismatched_tokens, window_changed = 0, 0, 0
    for r in requests:
        want = reference_generate(model, r["prompt"], r["max_new"], r["stop"])
        got = results[r["tag"]]["output"]
        if got != want:
            mismatches += 1
            mismatched_tokens += sum(a != b for a, b in zip(got, want)) + abs(len(got) -
                                                                              len(want))
        if args.sliding_window:  # what the window changes: the answer of full attention
            window_changed += want != reference_generate(model, r["prompt"], r["max_new"],
                                                         r["stop"], windows=False)
    summary = dict(
        device=args.device, requests=len(requests), steps=steps,
        output_tokens=stats["output_tokens"],
        prefix_hit_requests=sum(1 for e in results.values() if e["cached_tokens"] > 0),
        prefix_hit_tokens=stats["prefix_hit_tokens"], preemptions=stats["preemptions"],
        drafts_proposed=stats["spec_proposed"], drafts_accepted=stats["spec_accepted"],
        draft_acceptance_by_position=[
            round(a / p, 3) for a, p in zip(stats["spec_accepted_at"], stats["spec_proposed_at"])
            if p],
        shared_prefill_waits=stats["shared_prefill_waits"],
        cache_groups=len(engine.groups), window_blocks_released=window_released,
        window_changed_requests=window_changed, placeholder_tokens=placeholders,
        mismatched_requests=mismatches, mismatched_tokens=mismatched_tokens,
        serve_seconds=round(serve_s, 2),
        decode_kernel_max_error=engine_error, decode_kernel_checks=engine_checks,
        metrics_families=metrics.count("# TYPE "))
    if args.json:
        print(json.dumps(summary))
    else:
        print("served %(requests)d requests in %(steps)d steps on %(device)s "
              "(%(serve_seconds).1f s): %(output_tokens)d output tokens" % summary)
        print("  prefix hits: %(prefix_hit_requests)d requests, %(prefix_hit_tokens)d tokens"
              % summary)
        print("  preemptions: %(preemptions)d; waits for a shared prompt being computed: "
              "%(shared_prefill_waits)d" % summary)
        if args.sliding_window:
            print("  sliding window: up to %(window_blocks_released)d blocks of a request let "
                  "go; %(window_changed_requests)d answers differ from full attention"
                  % summary)
        if args.two_plans_in_flight:
            print("  two plans in flight: %(placeholder_tokens)d decode inputs planned before "
                  "their token was sampled" % summary)
        print("  drafts: %(drafts_accepted)d accepted of %(drafts_proposed)d proposed"
              % summary)
        print("  draft acceptance by position: %s" % summary["draft_acceptance_by_position"])
        print("  kvrt decode-attention kernel vs the model: max |error| "
              "%(decode_kernel_max_error).1e over %(decode_kernel_checks)d queries" % summary)
        print("  mismatches against the unpaged reference: %(mismatched_requests)d requests,"
              " %(mismatched_tokens)d tokens" % summary)
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
