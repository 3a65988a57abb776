#!/usr/bin/python3
"""kvrt-soak --plot: throughput, prefix hit rate, TTFT p99 and the injected
faults of one run on one time axis. Usage: soak_plot.py SOAK_JSON OUT_DIR."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

report = json.load(open(sys.argv[1]))
out = sys.argv[2]
series = report["series"]
t = [w["t"] for w in series]
rows = [("req_per_s", "finished requests / s"), ("hit_rate", "prefix hit rate"),
        ("ttft_p99_ms", "TTFT p99 (ms)")]
fig, axes = plt.subplots(len(rows) + 1, 1, sharex=True, figsize=(10, 9))
for ax, (key, label) in zip(axes, rows):
    ax.step(t, [w[key] for w in series], where="post")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
kinds = sorted({e["kind"] for e in report["fault_events"]})
for e in report["fault_events"]:
    axes[-1].scatter(e["t"], kinds.index(e["kind"]), marker="|", s=200)
    for ax in axes[:-1]:
        ax.axvline(e["t"], color="red", alpha=0.15)
axes[-1].set_yticks(range(len(kinds)))
axes[-1].set_yticklabels(kinds)
axes[-1].set_ylabel("faults")
axes[-1].set_xlabel("seconds since start")
fig.suptitle("kvrt-soak: %d nodes, %s" % (report["nodes"], report["network"]))
fig.tight_layout()
fig.savefig(out + "/soak.png", dpi=100)
print(out + "/soak.png", file=sys.stderr)
