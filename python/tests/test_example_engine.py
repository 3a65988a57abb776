"""The example engine (python/examples/serve.py) serves TinyLlama through
kvrt and must reproduce the unpaged reference token for token, while the
workload forces preemptions and hits the prefix cache and speculation
accepts drafts."""
import json
import os
import subprocess

import pytest

pytest.importorskip("torch")
SERVE = os.path.join(os.path.dirname(__file__), "..", "examples", "serve.py")


@pytest.mark.parametrize("args", [
    [],                                                         # the defaults
    ["--seed", "1", "--block-tokens", "4", "--blocks", "70", "--spec-k", "2",
     "--chunk", "7", "--max-seqs", "16"],
])
def test_served_outputs_equal_the_reference(args):
    r = subprocess.run(["/usr/bin/python3", SERVE, "--json", *args], capture_output=True,
                       text=True, timeout=300)
    assert r.stdout, r.stderr
    summary = json.loads(r.stdout)
    assert summary["mismatched_requests"] == 0, summary
    assert summary["mismatched_tokens"] == 0
    assert summary["preemptions"] >= 1, summary
    assert summary["prefix_hit_requests"] >= 1, summary
    assert summary["drafts_accepted"] >= 1, summary
    assert summary["metrics_families"] > 20
    # kvrt's paged decode kernel (float32) agrees with the model's attention
    assert summary["decode_kernel_checks"] > 0
    assert summary["decode_kernel_max_error"] < 1e-4, summary
    assert r.returncode == 0
