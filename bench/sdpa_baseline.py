#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention on the shapes of kvrt-bench's
decode-attention figures, with K/V laid out contiguously
([seqs][kv_heads][len][head_dim], what SDPA wants), as the baseline the
paged kernel is compared with.

Same shapes as bench/suite_kernels_gpu.c: one query token per sequence,
32 query heads over 8 KV heads (enable_gqa), head_dim 128, FP16;
sequences 16/64/256 x 1024/4096 tokens. Figures are GB/s of KV read
(seqs * len * 8 * 128 * 2 bytes * K and V), the median of `--repeats`
samples of 10 calls each timed with CUDA events, one JSON object per line
in kvrt-bench's figure format.

Usage: python3 bench/sdpa_baseline.py [--repeats N]
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def timed_gbps(fn, kv_bytes, repeats):
    fn()  # warm up (and pick the kernel)
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            fn()
        end.record()
        end.synchronize()
        samples.append(10 * kv_bytes / (start.elapsed_time(end) * 1e6))
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    dev = torch.device("cuda")
    print(json.dumps({"device": torch.cuda.get_device_name(dev),
                      "torch": torch.__version__}))

    # Copy bandwidth the same way kvrt-bench counts it: bytes read + written.
    a = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    copy = timed_gbps(lambda: b.copy_(a), 2 * a.numel() / 10, args.repeats)
    print(json.dumps({"name": "torch.copy_bandwidth.d2d", "unit": "GB/s",
                      "value": round(copy, 1)}))
    del a, b

    q_heads, kv_heads, dim = 32, 8, 128
    for seqs in (16, 64, 256):
        for length in (1024, 4096):
            q = torch.randn(seqs, q_heads, 1, dim, dtype=torch.float16, device=dev)
            k = torch.randn(seqs, kv_heads, length, dim, dtype=torch.float16, device=dev)
            v = torch.randn_like(k)
            kv_bytes = 2 * k.numel() * k.element_size()
            gbps = timed_gbps(
                lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                kv_bytes, args.repeats)
            print(json.dumps({"name": f"torch.sdpa.s{seqs}.len{length}", "unit": "GB/s",
                              "value": round(gbps, 1),
                              "note": "contiguous K/V, enable_gqa, fp16"}))
            del q, k, v
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
