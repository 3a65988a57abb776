#!/usr/bin/python3
"""An engine that serves TinyLlama through kvrt, and checks every answer
against the unpaged reference.

Each iteration is what a real engine does:
  1. kvrt_sched_step: a batch plan (continuous batching, chunked prefill,
     prefix-cache hits already adopted, preemptions decided, n-gram drafts
     proposed);
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


class Engine:
    def __init__(self, model, num_blocks, tokens_per_block, device, max_batch_tokens,
                 max_seqs, chunk, spec_k):
        c = model.cfg
        self.model, self.device = model, device
        self.ctx = kvrt.Context(name="tiny-llama")
        layout = kvrt.Layout(c.layers, c.kv_heads, c.head_dim, tokens_per_block,
                             dtype="float16")
        if device == "cuda":
            # The engine owns GPU memory and lends it to kvrt.
            self.kv_memory = torch.zeros(layout.block_bytes * num_blocks, dtype=torch.uint8,
                                         device="cuda")
            self.pool = kvrt.Pool(self.ctx, layout, num_blocks,
                                  base=self.kv_memory.data_ptr(),
                                  base_bytes=self.kv_memory.numel())
            self.kv = kvrt.KVCache(self.pool, base=self.kv_memory, device="cuda")
        else:
            self.pool = kvrt.Pool(self.ctx, layout, num_blocks)  # host memory from kvrt
            self.kv = kvrt.KVCache(self.pool)
        self.cache = kvrt.PrefixCache(self.pool, model_id="tiny-llama-seed0")
        self.sched = kvrt.Scheduler(self.pool, self.cache, max_batch_tokens=max_batch_tokens,
                                    max_seqs=max_seqs, prefill_chunk_tokens=chunk,
                                    max_draft_tokens=spec_k, ngram=(1, 3))
        self.tpb = tokens_per_block
        self.attention_error = 0.0  # kvrt's paged decode kernel against the model
        self.attention_checks = 0

    def context_slots(self, row, length):
        """KV slots of positions [0, length) of the sequence whose block-table
        row is `row`."""
        pos = np.arange(length)
        return row[pos // self.tpb].astype(np.int64) * self.tpb + pos % self.tpb

    def run_plan(self, plan):
        """Runs the model on the plan; returns (tokens, num_accepted) to commit."""
        m, c = self.model, self.model.cfg
        self.kv.copy_blocks(plan.copies)
        tokens, positions = plan.input_tokens, plan.positions
        slots, starts = plan.slot_mapping, plan.query_start_loc
        seqs, seq_lens, rows = plan.seqs, plan.seq_lens, plan.block_rows
        row_of = plan.row_index
        x = [m.embed_token(t) for t in tokens]
        decodes = [i for i in range(len(seqs)) if seqs[i]["num_new_tokens"] == 1]
        for layer in range(c.layers):
            qkv = [m.qkv(layer, x[t], int(positions[t])) for t in range(len(tokens))]
            keys = torch.stack([k for _, k, _ in qkv])
            values = torch.stack([v for _, _, v in qkv])
            self.kv.write(layer, slots, keys, values)
            attn_of = {}
            for i in range(len(seqs)):
                n = int(seq_lens[i])
                ctx_k = torch.empty(n, c.kv_heads, c.head_dim, device=self.device)
                ctx_v = torch.empty_like(ctx_k)
                self.kv.read(layer, self.context_slots(rows[row_of[i]], n), ctx_k, ctx_v)
                for t in range(starts[i], starts[i + 1]):
                    p = int(positions[t])
                    attn = m.attend(qkv[t][0], ctx_k[:p + 1], ctx_v[:p + 1])
                    attn_of[t] = attn
                    x[t] = m.finish_layer(layer, x[t], attn)
            if decodes:
                self.check_decode_kernel(layer, plan, decodes, qkv, attn_of)
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
        return out, accepted

    def check_decode_kernel(self, layer, plan, decodes, qkv, attn_of):
        """Runs kvrt's paged decode-attention kernel over the same block-table
        rows (float32) and records how far it is from the model's float64
        attention. Not used for sampling: the model's numerics are float64."""
        c = self.model.cfg
        starts, rows, row_of = plan.query_start_loc, plan.block_rows, plan.row_index
        tokens = [int(starts[i]) for i in decodes]
        query = torch.stack([qkv[t][0] for t in tokens]).to(torch.float32).contiguous()
        out = torch.empty_like(query)
        self.kv.decode_attention(layer, query, rows[row_of[decodes]], plan.seq_lens[decodes],
                                 out)
        want = torch.stack([attn_of[t] for t in tokens]).view(len(tokens), c.heads, c.head_dim)
        self.attention_checks += len(tokens)
        self.attention_error = max(self.attention_error,
                                   float((out.double() - want).abs().max()))

    def serve(self, requests):
        pending = sorted(requests, key=lambda r: r["arrive_step"])
        results, step, live = {}, 0, 0
        while pending or live:
            while pending and pending[0]["arrive_step"] <= step:
                r = pending.pop(0)
                self.sched.add(r["prompt"], r["max_new"], stop=list(r["stop"]),
                               user_tag=r["tag"])
                live += 1
            plan = self.sched.step(now_ns=step)
            step += 1
            if len(plan):
                tokens, accepted = self.run_plan(plan)
                self.sched.commit(plan, tokens, num_accepted=accepted)
            for event in self.sched.drain():
                results[event["user_tag"]] = event
                live -= 1
            if step > 100000:
                raise RuntimeError("the engine did not finish")
        self.pool.verify()
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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no GPU")
    torch.set_num_threads(1)  # the same reduction order in every call
    model = TinyLlama(Config(), seed=args.seed, device=args.device)
    requests = make_workload(args.requests, model.cfg.vocab, args.seed)
    start = time.monotonic()
    engine = Engine(model, args.blocks, args.block_tokens, args.device,
                    args.max_batch_tokens, args.max_seqs, args.chunk, args.spec_k)
    try:
        results, steps = engine.serve(requests)
        stats = engine.sched.stats()
        engine_error, engine_checks = engine.attention_error, engine.attention_checks
        metrics = engine.ctx.metrics()
    finally:
        engine.close()
    serve_s = time.monotonic() - start
    mismatches, mismatched_tokens = 0, 0
    for r in requests:
        want = reference_generate(model, r["prompt"], r["max_new"], r["stop"])
        got = results[r["tag"]]["output"]
        if got != want:
            mismatches += 1
            mismatched_tokens += sum(a != b for a, b in zip(got, want)) + abs(len(got) -
                                                                              len(want))
    summary = dict(
        device=args.device, requests=len(requests), steps=steps,
        output_tokens=stats["output_tokens"],
        prefix_hit_requests=sum(1 for e in results.values() if e["cached_tokens"] > 0),
        prefix_hit_tokens=stats["prefix_hit_tokens"], preemptions=stats["preemptions"],
        drafts_proposed=stats["spec_proposed"], drafts_accepted=stats["spec_accepted"],
        draft_acceptance_by_position=[
            round(a / p, 3) for a, p in zip(stats["spec_accepted_at"], stats["spec_proposed_at"])
            if p],
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
        print("  preemptions: %(preemptions)d" % summary)
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
