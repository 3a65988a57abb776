"""Calls a careless or hostile engine makes: each is a KvrtError (or works
as documented), never memory written out of bounds, a value silently
wrapped, or a crashed interpreter."""
import copy
import gc
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import kvrt


def refused(call, *words):
    with pytest.raises(kvrt.KvrtError) as e:
        call()
    assert e.value.name == "KVRT_ERR_INVALID_ARG", e.value
    for word in words:
        assert word in str(e.value), e.value


def test_counts_out_of_range_are_refused_not_wrapped(ctx, pool):
    cache = kvrt.PrefixCache(pool)
    refused(lambda: cache.match(list(range(40)), max_blocks=-1), "max_blocks")
    sched = kvrt.Scheduler(pool, cache)
    refused(lambda: sched.add([1, 2, 2 ** 32 + 7], 4), "prompt")
    refused(lambda: sched.add([1.9, 2.0], 4), "integers")
    refused(lambda: sched.add([1, 2], 4, priority=2 ** 31), "priority")
    refused(lambda: sched.add([1, 2], 4, user_tag=-1), "user_tag")
    seq = sched.add([1, 2, 3], 4)
    refused(lambda: sched.abort(seq + 2 ** 64), "seq_id")
    blocks = pool.alloc(4)
    refused(lambda: pool.free(blocks.reshape(1, 4)), "dimension")
    refused(lambda: pool.free([int(blocks[0]) + 2 ** 32]), "int32")
    pool.free(blocks)
    refused(lambda: sched.add([1, 2], 4, salt=3), "salt")
    sched.abort(seq)
    sched.drain()
    sched.close()
    cache.close()
    pool.verify()
    assert pool.info()["used_blocks"] == 0


def test_commit_counts_one_accepted_count_per_plan_entry(pool):
    sched = kvrt.Scheduler(pool, max_draft_tokens=2)
    a, b = sched.add([1, 2, 3, 4], 8), sched.add([5, 6, 7, 8], 8)
    plan = sched.step()
    refused(lambda: sched.commit(plan, [9, 9], num_accepted=[0]), "num_accepted")
    sched.commit(plan, [9, 9])  # the refused commit left the plan usable
    for seq in (a, b):
        sched.abort(seq)
    sched.drain()
    sched.close()
    assert pool.info()["used_blocks"] == 0


def test_kernel_outputs_must_be_writable_and_large_enough(pool):
    kc = kvrt.KVCache(pool)
    per = pool.layout.num_kv_heads * pool.layout.head_dim
    slots = np.arange(4, dtype=np.int64)
    frozen = np.frombuffer(bytes(4 * per * 2), dtype=np.float16).reshape(4, per)
    refused(lambda: kc.read(0, slots, frozen, np.zeros((4, per), np.float16)), "read-only")
    blocks = pool.alloc(1)
    q = np.ones((1, pool.layout.num_kv_heads, pool.layout.head_dim), np.float32)
    refused(lambda: kc.decode_attention(0, q, blocks.reshape(1, 1), [1],
                                        np.zeros(1, np.float32)), "out holds 1")
    pool.free(blocks)


def test_strided_torch_rows_must_be_one_row_per_token(pool):
    torch = pytest.importorskip("torch")
    kc = kvrt.KVCache(pool)
    per = pool.layout.num_kv_heads * pool.layout.head_dim
    slots = np.arange(4, dtype=np.int64)
    backing = torch.zeros(4 * per * 4, dtype=torch.float16)
    wrong = backing.view(2, 8 * per)[:, :2 * per]  # 4 tokens' elements, 2 rows
    refused(lambda: kc.read(0, slots, wrong, wrong.clone()), "strided rows")
    fused = torch.zeros(4, 3 * per, dtype=torch.float16)  # a fused QKV tensor's K part
    kc.write(0, slots, fused[:, :per], fused[:, per:2 * per])  # one row per token: accepted


def _plan_rows():
    context = kvrt.Context()
    pool = kvrt.Pool(context, kvrt.Layout(2, 2, 8, 16), num_blocks=1024)
    sched = kvrt.Scheduler(pool, kvrt.PrefixCache(pool), max_seqs=256, max_batch_tokens=65536)
    for _ in range(8):
        sched.add(list(range(1, 200)), 4)
    rows = sched.step().block_rows
    return rows, rows.copy()  # nothing else refers to the context once this returns


def test_plan_views_keep_their_scheduler_alive():
    view, expected = _plan_rows()
    gc.collect()
    assert (view == expected).all()
    del view
    gc.collect()


def test_errors_pickle_and_copy():
    error = kvrt.KvrtError(-100, "no blocks", "kvrt_seq_add")
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert (clone.status, clone.name, clone.detail, clone.function) == (
            error.status, error.name, error.detail, error.function)
        assert str(clone) == str(error)


_DAEMON_AT_EXIT = r'''
import threading, time, kvrt
ctx = kvrt.Context(); pool = kvrt.Pool(ctx, kvrt.Layout(2, 2, 8, 4), 4096)
s = kvrt.Scheduler(pool, kvrt.PrefixCache(pool), max_seqs=256, max_batch_tokens=4096)
started = threading.Event()
def loop():
    for n in range(10 ** 7):
        try:
            if n % 4 == 0:
                s.add(list(range(1, 60)), 30)
            p = s.step(); started.set()
            s.commit(p, [5] * int(p.seqs["sample"].sum()) if len(p) else []); s.drain()
        except kvrt.KvrtError:
            return
threading.Thread(target=loop, daemon=True).start()
started.wait(10); time.sleep(0.05)
'''


def test_exit_with_a_daemon_thread_inside_kvrt_does_not_crash():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    codes = [subprocess.run([sys.executable, "-c", _DAEMON_AT_EXIT], env=env, timeout=60,
                            capture_output=True).returncode for _ in range(6)]
    assert codes == [0] * 6, codes


def test_two_plans_in_flight_from_python(pool):
    """Asynchronous scheduling (docs/scheduler.md): step N+1 before committing
    N; N+1 decodes a placeholder for N's token; commits go in step order."""
    sched = kvrt.Scheduler(pool, max_plans_in_flight=2)
    seq = sched.add([1, 2, 3, 4, 5], 3)
    first = sched.step(0)
    second = sched.step(0)
    assert first.valid and second.valid
    assert second.input_tokens.tolist() == [-1]  # KVRT_TOKEN_PLACEHOLDER
    with pytest.raises(kvrt.KvrtError) as e:
        sched.step(0)  # a third plan in flight
    assert e.value.name == "KVRT_ERR_BAD_STATE"
    with pytest.raises(kvrt.KvrtError):
        sched.commit(second, [8])  # out of step order
    sched.commit(first, [7])
    sched.commit(second, [8])
    third = sched.step(0)
    assert third.input_tokens.tolist() == [8] and not first.valid
    sched.commit(third, [9])
    ended = sched.drain()
    assert [e["id"] for e in ended] == [seq]
    assert ended[0]["output"] == [7, 8, 9]
    sched.close()
    assert pool.info()["used_blocks"] == 0


def test_wrong_python_types_are_kvrt_errors(pool):
    sched = kvrt.Scheduler(pool)
    rid = sched.add([1, 2, 3], 2)
    for call in (lambda: sched.set_drafts([rid]), lambda: sched.set_drafts(None),
                 lambda: kvrt.Scheduler(pool, ngram=(5,)),
                 lambda: kvrt.KVCache(pool).write(0, None, np.zeros(4), np.zeros(4)),
                 lambda: kvrt.KvEvents(None)):
        refused(call)
    sched.abort(rid)
    sched.drain()
    sched.close()
