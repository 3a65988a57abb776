"""The Python API over a real libkvrt: what a serving engine calls, and the
errors it gets for bad input instead of a crashed interpreter."""
import threading

import numpy as np
import pytest

import kvrt


def test_context_ctl_and_metrics(ctx, pool):
    names = ctx.ctl_names()
    assert names["pool.0.free"] == ("u64", "ro")
    assert ctx.ctl("pool.0.free") == pool.info()["free_blocks"] == 63
    assert ctx.ctl("ctx.version") == kvrt.version()[1]
    assert ctx.ctl("ctx.log.level", kvrt.LOG_INFO) == kvrt.LOG_WARN
    assert ctx.ctl("ctx.log.level") == kvrt.LOG_INFO
    text = ctx.metrics()
    assert "# TYPE kvrt_pool_free gauge" in text
    assert 'kvrt_pool_free{pool="0"} 63' in text
    with pytest.raises(kvrt.KvrtError) as e:
        ctx.ctl("no.such.node")
    assert e.value.name == "KVRT_ERR_NOT_FOUND" and "no.such.node" in e.value.detail


def test_block_table_slots_follow_blocks(pool):
    table = pool.table()
    slots, copies = table.append(20)
    blocks, tokens = table.blocks()
    assert tokens == 20 and len(blocks) == 2 and copies == []
    expected = [blocks[i // 16] * 16 + i % 16 for i in range(20)]
    assert slots.tolist() == expected
    assert table.slots(3, 4).tolist() == expected[3:7]
    table.truncate(10)
    assert table.blocks()[1] == 10
    table.close()
    pool.verify()
    assert pool.info()["used_blocks"] == 0


def test_scheduler_round_trip_with_prefix_hit_and_drain(ctx, pool):
    cache = kvrt.PrefixCache(pool)
    sched = kvrt.Scheduler(pool, cache, max_batch_tokens=64)
    prompt = list(range(1, 40))
    first = sched.add(prompt, max_new_tokens=2, user_tag=7)
    outputs = {}
    for _ in range(10):
        plan = sched.step(0)
        if len(plan) == 0:
            break
        seqs = plan.seqs
        assert plan.slot_mapping.flags.writeable is False
        tokens = [100 + i for i in range(len(plan)) if seqs[i]["sample"]]
        sched.commit(plan, tokens)
        for event in sched.drain():
            outputs[event["id"]] = event
    assert outputs[first]["output"] == [100, 100]
    assert outputs[first]["end_reason"] == "length" and outputs[first]["user_tag"] == 7
    sched.add(prompt, max_new_tokens=1)
    plan = sched.step(0)
    assert plan.seqs[0]["num_computed_tokens"] == 32, "two full blocks hit the cache"
    sched.commit(plan, [5])
    assert sched.drain()[0]["cached_tokens"] == 32
    stats = sched.stats()
    assert stats["prefix_hit_tokens"] == 32 and stats["added"] == 2
    assert cache.stats()["hit_tokens"] == 32


def test_abort_and_unknown_request(ctx, pool):
    sched = kvrt.Scheduler(pool)
    rid = sched.add([1, 2, 3], max_new_tokens=4)
    assert sched.info(rid)["state"] == "waiting"
    sched.abort(rid)
    (event,) = sched.drain()
    assert event["end_reason"] == "aborted"
    with pytest.raises(kvrt.KvrtError) as e:
        sched.info(rid)
    assert e.value.name == "KVRT_ERR_UNKNOWN_REQUEST"


def test_ngram_speculation_is_planned_and_verified(ctx, pool):
    sched = kvrt.Scheduler(pool, max_draft_tokens=4, ngram=(1, 3), adaptive_draft=0)
    sched.add([5, 6, 7, 5, 6, 7, 5, 6], max_new_tokens=12)
    accepted_total = 0
    for _ in range(20):
        plan = sched.step(0)
        if len(plan) == 0:
            break
        seq = plan.seqs[0]
        start = plan.query_start_loc[0]
        if seq["kind"] == kvrt.PLAN_SPEC:
            drafts = plan.input_tokens[start + 1:start + 1 + seq["num_drafts"]].tolist()
            sched.commit(plan, drafts + [6], num_accepted=[len(drafts)])
            accepted_total += len(drafts)
        else:
            sched.commit(plan, [7] if seq["sample"] else [])
        sched.drain()
    assert accepted_total > 0
    assert sched.stats()["spec_accepted"] == accepted_total


def test_stale_plan_and_bad_commit_are_refused(ctx, pool):
    sched = kvrt.Scheduler(pool)
    sched.add([1, 2, 3], max_new_tokens=2)
    plan = sched.step(0)
    with pytest.raises(kvrt.KvrtError) as e:
        sched.step(0)
    assert e.value.name == "KVRT_ERR_BAD_STATE"
    with pytest.raises(kvrt.KvrtError) as e:
        sched.commit(plan, [1, 2, 3])
    assert e.value.name == "KVRT_ERR_TOKEN_COUNT"
    sched.commit(plan, [9])
    assert plan.input_tokens.tolist() == [1, 2, 3]  # valid until the next step
    with pytest.raises(kvrt.KvrtError) as e:
        sched.commit(plan, [1])
    assert e.value.name == "KVRT_ERR_BAD_STATE" and "already committed" in e.value.detail
    sched.step(0)
    for attempt in (lambda: plan.input_tokens, lambda: sched.commit(plan, [1])):
        with pytest.raises(kvrt.KvrtError) as e:
            attempt()
        assert e.value.name == "KVRT_ERR_BAD_STATE" and "valid until" in e.value.detail


def test_wrong_types_and_freed_handles_raise(ctx, pool):
    with pytest.raises(kvrt.KvrtError):
        kvrt.Pool(ctx, "not a layout", 10)
    with pytest.raises(kvrt.KvrtError):
        kvrt.Layout(2, 2, 16, "sixteen")
    with pytest.raises(kvrt.KvrtError) as e:
        kvrt.Layout(2, 2, 16, 0)
    assert e.value.name == "KVRT_ERR_BAD_LAYOUT"
    sched = kvrt.Scheduler(pool)
    with pytest.raises(kvrt.KvrtError):
        sched.add("hello", 3)
    with pytest.raises(kvrt.KvrtError):
        sched.add([1, 2], max_new_tokens=-1)
    with pytest.raises(kvrt.KvrtError) as e:
        pool.close()
    assert e.value.name == "KVRT_ERR_BUSY"
    sched.close()
    with pytest.raises(kvrt.KvrtError) as e:
        sched.step()
    assert "after close" in e.value.detail
    ctx.close()
    for call in (pool.info, lambda: ctx.metrics(), lambda: pool.table()):
        with pytest.raises(kvrt.KvrtError) as e:
            call()
        assert e.value.name == "KVRT_ERR_BAD_STATE"
    ctx.close()  # idempotent


def test_cpu_kernels_write_read_copy_and_attention(ctx):
    layout = kvrt.Layout(2, 2, 8, 4, dtype="float16")
    pool = kvrt.Pool(ctx, layout, num_blocks=16)
    kv = kvrt.KVCache(pool)
    rng = np.random.default_rng(0)
    table = pool.table()
    slots, _ = table.append(6)
    key = rng.standard_normal((6, 2, 8)).astype(np.float16)
    value = rng.standard_normal((6, 2, 8)).astype(np.float16)
    kv.write(1, slots, key, value)
    k_out = np.zeros((6, 2, 8), np.float32)
    v_out = np.zeros((6, 2, 8), np.float32)
    kv.read(1, slots, k_out, v_out)
    assert np.array_equal(k_out, key.astype(np.float32))
    assert np.array_equal(v_out, value.astype(np.float32))
    # one query per sequence over its blocks, against a numpy reference
    blocks, _ = table.blocks()
    query = rng.standard_normal((1, 4, 8)).astype(np.float32)
    out = np.zeros((1, 4, 8), np.float32)
    kv.decode_attention(1, query, [list(blocks)], [6], out)
    ref = np.zeros((4, 8))
    for h in range(4):
        kvh = h // 2
        scores = key[:, kvh].astype(np.float64) @ query[0, h] / np.sqrt(8)
        w = np.exp(scores - scores.max())
        ref[h] = (w / w.sum()) @ value[:, kvh].astype(np.float64)
    assert np.allclose(out[0], ref, atol=2e-3)
    # copy block 0 of the table onto a fresh block
    (dst,) = pool.alloc(1)
    kv.copy_blocks([(blocks[0], dst)])
    k2 = np.zeros((4, 2, 8), np.float32)
    v2 = np.zeros((4, 2, 8), np.float32)
    kv.read(1, [dst * 4 + i for i in range(4)], k2, v2)
    assert np.array_equal(k2, k_out[:4])
    with pytest.raises(kvrt.KvrtError):
        kv.write(0, slots, key, value.astype(np.float32))  # dtypes differ
    with pytest.raises(kvrt.KvrtError):
        kv.write(0, slots, key[:2], value[:2])  # too few rows for the slots
    with pytest.raises(kvrt.KvrtError) as e:
        kv.write(0, [10 ** 6] * 6, key, value)
    assert e.value.detail


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    with kvrt.Context() as ctx:
        pool = kvrt.Pool(ctx, kvrt.Layout(1, 1, 4, 4), num_blocks=8)
        kv = kvrt.KVCache(pool)
        k = torch.arange(8, dtype=torch.float16).reshape(2, 1, 4)
        kv.write(0, torch.tensor([4, 5]), k, k + 1)
        out_k, out_v = torch.zeros(2, 1, 4), torch.zeros(2, 1, 4)
        kv.read(0, [4, 5], out_k, out_v)
        assert torch.equal(out_k, k.float()) and torch.equal(out_v, (k + 1).float())
        with pytest.raises(kvrt.KvrtError):
            kv.write(0, [4, 5], k.to(torch.float64), k.to(torch.float64))


def test_log_callback_from_kvrt_threads_holds_the_gil():
    records = []
    main = threading.get_ident()

    def log(level, message):
        records.append((threading.get_ident(), level, message))

    with kvrt.Context(name="a", log=log, log_level=kvrt.LOG_DEBUG) as a, \
            kvrt.Context(name="b", log=log, log_level=kvrt.LOG_DEBUG) as b:
        key = b"0123456789abcdef-key"
        server = kvrt.xfer.Agent(a, key)
        client = kvrt.xfer.Agent(b, key)
        peer = client.connect(server.address())
        info = peer.info()
        assert info["outstanding"] == 0 and info["instance"] != 0
        buf = np.arange(4096, dtype=np.uint8)
        dst = np.zeros(4096, dtype=np.uint8)
        remote_region = server.register(buf)
        local = client.register(dst)
        remote = peer.import_region(remote_region.descriptor())
        request = peer.post([(kvrt.xfer.READ, local, 0, remote, 0, 4096)])
        assert request.wait(10000)
        assert np.array_equal(buf, dst)
        request.close()
        client.close()
        server.close()
    assert records, "kvrt logged nothing at DEBUG"
    assert any(tid != main for tid, _, _ in records), "no log line came from a kvrt thread"


def test_pool_over_engine_owned_memory():
    torch = pytest.importorskip("torch")
    with kvrt.Context() as ctx:
        layout = kvrt.Layout(1, 1, 4, 4)
        memory = torch.zeros(layout.block_bytes * 8, dtype=torch.uint8)
        pool = kvrt.Pool(ctx, layout, 8, base=memory.data_ptr(), base_bytes=memory.numel())
        assert pool.info()["host_memory"] == 0
        assert ctx.ctl("ctx.host.mapped_bytes") == 0, "engine memory maps no host region"
        kv = kvrt.KVCache(pool, base=memory)
        kv.write(0, [5], torch.ones(1, 1, 4, dtype=torch.float16),
                 torch.full((1, 1, 4), 2.0, dtype=torch.float16))
        k_offset = layout.page_offset(8, 1, 0, 0) + 1 * 4 * 2   # block 1, token 1
        assert memory[k_offset:k_offset + 8].view(torch.float16).tolist() == [1.0] * 4
        with pytest.raises(kvrt.KvrtError) as e:
            kvrt.KVCache(pool, base=memory[:10])
        assert "needs" in e.value.detail


def test_kv_blocks_move_between_agents():
    key = b"0123456789abcdef-key"
    layout = kvrt.Layout(2, 2, 8, 4, dtype="float16")
    with kvrt.Context(name="src") as a, kvrt.Context(name="dst") as b:
        src_pool, dst_pool = kvrt.Pool(a, layout, 16), kvrt.Pool(b, layout, 16)
        src_kv = kvrt.KVCache(src_pool)
        table = src_pool.table()
        slots, _ = table.append(8)
        rows = np.arange(8 * 2 * 8, dtype=np.float16).reshape(8, 2, 8)
        src_kv.write(1, slots, rows, -rows)
        server, client = kvrt.xfer.Agent(b, key), kvrt.xfer.Agent(a, key)
        remote_pool = server.register(dst_pool)
        local_pool = client.register(src_pool)
        peer = client.connect(server.address())
        remote = peer.import_region(remote_pool.descriptor())
        src_blocks, _ = table.blocks()
        dst_blocks = dst_pool.alloc(len(src_blocks))
        request = peer.kv_post(kvrt.xfer.WRITE, local_pool, remote, src_blocks, dst_blocks)
        assert request.wait(10000)
        request.close()
        k, v = np.zeros((8, 2, 8), np.float32), np.zeros((8, 2, 8), np.float32)
        dst_slots = [dst_blocks[i // 4] * 4 + i % 4 for i in range(8)]
        kvrt.KVCache(dst_pool).read(1, dst_slots, k, v)
        assert np.array_equal(k, rows.astype(np.float32))
        assert np.array_equal(v, -rows.astype(np.float32))
        with pytest.raises(kvrt.KvrtError) as e:
            dst_pool.close()
        assert e.value.name == "KVRT_ERR_BUSY", "a registered pool is held"
        remote.close()
        remote_pool.close()
        local_pool.close()
        client.close()
        server.close()
        with pytest.raises(kvrt.KvrtError):
            peer.info()  # died with its agent


def test_csr_block_tables_match_the_padded_rows(ctx, pool):
    sched = kvrt.Scheduler(pool, csr_block_tables=1)
    sched.add(list(range(1, 40)), 2)
    sched.add(list(range(1, 20)), 2)
    plan = sched.step(0)
    offsets, ids = plan.block_table_offsets, plan.block_table_ids
    for i in range(len(plan)):
        csr = ids[offsets[i]:offsets[i + 1]].tolist()
        row = plan.block_rows[plan.row_index[i]][:len(csr)].tolist()
        assert csr == row and kvrt.NULL_BLOCK not in csr
    assert kvrt.Scheduler(pool).step(0).block_table_offsets is None
