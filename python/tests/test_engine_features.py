"""What a Python engine gets from kvrt beyond plain steps: cache reset,
per-request cache control and min_tokens, batch drafts, waiting for KV
that another host or tier delivers, and the scheduler's statistics as
counters and Prometheus metrics."""
import pytest

import kvrt


def run(sched, token=100, limit=50, drafts=None):
    """Steps until nothing runs; samples `token` everywhere (or, with
    drafts, accepts them all). Returns every end event by id."""
    ended = {}
    for _ in range(limit):
        plan = sched.step(0)
        if len(plan) == 0:
            return ended
        tokens, accepted = [], []
        for seq in plan.seqs:
            n = seq["num_drafts"] if drafts else 0
            if seq["sample"]:
                tokens += list(drafts[seq["id"]][:n]) if n else []
                tokens.append(token)
            accepted.append(n if seq["sample"] else 0)
        sched.commit(plan, tokens, accepted if drafts else None)
        ended.update({e["id"]: e for e in sched.drain()})
    raise AssertionError("requests still running after %d steps" % limit)


def test_cache_reset_forgets_every_cached_prefix(ctx, pool):
    cache = kvrt.PrefixCache(pool)
    sched = kvrt.Scheduler(pool, cache)
    prompt = list(range(1, 50))
    run(sched) if sched.add(prompt, max_new_tokens=1) else None
    assert cache.stats()["cached_blocks"] == 3
    cache.reset()
    assert cache.stats()["cached_blocks"] == 0
    assert pool.info()["cached_blocks"] == 0
    rid = sched.add(prompt, max_new_tokens=1)
    assert run(sched)[rid]["cached_tokens"] == 0, "a reset cache served an old block"
    cache.verify()


def test_cache_reset_refuses_while_a_request_holds_cached_blocks(ctx, pool):
    cache = kvrt.PrefixCache(pool)
    sched = kvrt.Scheduler(pool, cache)
    prompt = list(range(1, 50))
    sched.add(prompt, max_new_tokens=1)
    run(sched)
    rid = sched.add(prompt, max_new_tokens=5)
    sched.commit(sched.step(0), [9])  # running, holding its hits
    with pytest.raises(kvrt.KvrtError) as e:
        cache.reset()
    assert e.value.name == "KVRT_ERR_BUSY"
    assert cache.stats()["cached_blocks"] > 0, "a refused reset changed the cache"
    cache.reset(forget_busy=True)
    assert cache.stats()["cached_blocks"] == 0
    assert run(sched)[rid]["output_tokens"] == 5
    cache.verify()
    pool.verify()


def test_per_request_cache_flags(ctx, pool):
    cache = kvrt.PrefixCache(pool)
    sched = kvrt.Scheduler(pool, cache)
    prompt = list(range(1, 50))  # 3 full blocks of 16 + 1
    sched.add(prompt, max_new_tokens=1, cache_flags=kvrt.CACHE_SKIP_WRITE)
    run(sched)
    assert cache.stats()["cached_blocks"] == 0, "SKIP_WRITE left K/V behind"
    sched.add(prompt, max_new_tokens=1)
    run(sched)
    skip = sched.add(prompt, max_new_tokens=1, cache_flags=kvrt.CACHE_SKIP_READ)
    drop = sched.add(prompt, max_new_tokens=1, cache_flags=kvrt.CACHE_DROP_LAST_HIT)
    plain = sched.add(prompt, max_new_tokens=1)
    ended = run(sched)
    assert ended[skip]["cached_tokens"] == 0
    assert ended[drop]["cached_tokens"] == 32
    assert ended[plain]["cached_tokens"] == 48
    with pytest.raises(kvrt.KvrtError) as e:
        sched.add(prompt, max_new_tokens=1, cache_flags=1 << 9)
    assert e.value.name == "KVRT_ERR_INVALID_ARG"


def test_parallel_samples_compute_their_prompt_once(ctx, pool):
    cache = kvrt.PrefixCache(pool)
    sched = kvrt.Scheduler(pool, cache, shared_prefill_min_tokens=32)
    prompt = list(range(1, 70))  # 4 full blocks of 16 + 5
    ids = [sched.add(prompt, max_new_tokens=2) for _ in range(4)]  # n = 4
    plan = sched.step(0)
    assert [s["id"] for s in plan.seqs] == ids[:1], "the other samples wait"
    assert sched.stats()["shared_prefill_waits"] == 3
    sched.commit(plan, [100])
    plan = sched.step(0)
    computed = {s["id"]: s["num_computed_tokens"] for s in plan.seqs}
    assert [computed[i] for i in ids[1:]] == [64, 64, 64], computed
    assert cache.stats()["queries"] == 4, "one query per admission"
    sched.commit(plan, [100] * len(plan))
    run(sched)
    assert ctx.ctl("sched.0.shared_prefill_waits") == 3
    with pytest.raises(kvrt.KvrtError) as e:
        kvrt.Scheduler(pool, shared_prefill_min_tokens=-1)
    assert e.value.name == "KVRT_ERR_INVALID_ARG"
    pool.verify()


def test_min_tokens_keeps_early_stop_tokens_as_output(ctx, pool):
    sched = kvrt.Scheduler(pool)
    early = sched.add([1, 2, 3], max_new_tokens=6, stop=[7])
    late = sched.add([1, 2, 3], max_new_tokens=6, stop=[7], min_tokens=3)
    ended = run(sched, token=7)
    assert ended[early]["output"] == [7] and ended[early]["end_reason"] == "stop"
    assert ended[late]["output"] == [7, 7, 7, 7] and ended[late]["end_reason"] == "stop"
    with pytest.raises(kvrt.KvrtError) as e:
        sched.add([1, 2, 3], max_new_tokens=2, min_tokens=3)
    assert e.value.name == "KVRT_ERR_INVALID_ARG"


def test_batch_drafts_are_verified_and_counted_per_position(ctx, pool):
    sched = kvrt.Scheduler(pool, max_draft_tokens=3, adaptive_draft=0)
    ids = [sched.add([5, 6, 7], max_new_tokens=20) for _ in range(2)]
    drafts = {i: [100, 100, 100] for i in ids}
    sched.commit(sched.step(0), [100, 100])  # prefill; now decoding
    for _ in range(2):
        sched.set_drafts(drafts)
        plan = sched.step(0)
        assert [s["num_drafts"] for s in plan.seqs] == [3, 3]
        sched.commit(plan, [100] * 8, [3, 3])
    stats = sched.stats()
    assert stats["spec_proposed"] == 12 and stats["spec_accepted"] == 12
    assert stats["spec_proposed_at"][:4] == [4, 4, 4, 0]
    assert stats["spec_accepted_at"][:3] == [4, 4, 4]
    with pytest.raises(kvrt.KvrtError) as e:  # all or nothing
        sched.set_drafts({ids[0]: [1], ids[1]: [-1]})
    assert e.value.name == "KVRT_ERR_INVALID_ARG"
    assert sched.step(0).seqs[0]["num_drafts"] == 0, "a refused batch set a draft"


def test_drafts_can_come_with_the_commit(ctx, pool):
    sched = kvrt.Scheduler(pool, max_draft_tokens=3, adaptive_draft=0)
    ids = [sched.add([5, 6, 7], max_new_tokens=20) for _ in range(2)]
    plan = sched.step(0)
    sched.commit(plan, [100, 100], next_drafts=[[100, 100], []])  # prefill, then drafts
    plan = sched.step(0)
    assert [s["num_drafts"] for s in plan.seqs] == [2, 0]
    with pytest.raises(kvrt.KvrtError) as e:  # all or nothing
        sched.commit(plan, [100] * 4, [2, 0], next_drafts=[[1], [-1]])
    assert e.value.name == "KVRT_ERR_INVALID_ARG"
    with pytest.raises(kvrt.KvrtError) as e:
        sched.commit(plan, [100] * 4, [2, 0], next_drafts=[[1]])
    assert e.value.name == "KVRT_ERR_INVALID_ARG"
    sched.commit(plan, [100] * 4, [2, 0], next_drafts=[[], [100, 100, 100]])
    assert sched.info(ids[0])["output_tokens"] == 4
    plan = sched.step(0)
    assert [s["num_drafts"] for s in plan.seqs] == [0, 3]


def test_waiting_for_kv_that_lands(ctx, pool):
    sched = kvrt.Scheduler(pool, kvrt.PrefixCache(pool))
    rid = sched.add(list(range(1, 50)), max_new_tokens=2)
    arrival, blocks = sched.await_kv(rid, 48)
    assert len(blocks) == 3 and sched.info(rid)["state"] == "waiting_kv"
    assert len(sched.step(0)) == 0, "a request waiting for KV was planned"
    # ... the engine writes K/V into `blocks` (a peer, a tier) ...
    sched.arrival_complete(arrival, len(blocks))
    plan = sched.step(0)
    assert plan.seqs[0]["num_computed_tokens"] == 48 and plan.seqs[0]["num_new_tokens"] == 1
    sched.commit(plan, [9])
    stats = sched.stats()
    assert stats["arrivals"] == 1 and stats["arrived_tokens"] == 48
    assert run(sched)[rid]["output_tokens"] == 2
    with pytest.raises(kvrt.KvrtError) as e:
        sched.arrival_complete(arrival, 0)
    assert e.value.name == "KVRT_ERR_UNKNOWN_REQUEST"


def test_waiting_for_kv_that_fails_recomputes(ctx, pool):
    sched = kvrt.Scheduler(pool)
    rid = sched.add(list(range(1, 50)), max_new_tokens=1)
    arrival, blocks = sched.await_kv(rid, 48, deadline_ns=10)
    with pytest.raises(kvrt.KvrtError) as e:
        sched.await_kv(rid, 48)
    assert e.value.name == "KVRT_ERR_BAD_STATE"
    sched.arrival_complete(arrival, 1)  # one block landed, then the transfer failed
    plan = sched.step(0)
    assert plan.seqs[0]["num_computed_tokens"] == 16
    sched.commit(plan, [3] if plan.seqs[0]["sample"] else [])
    run(sched)
    assert sched.stats()["arrivals_failed"] == 1
    pool.verify()


def test_stats_reach_ctl_and_metrics(ctx, pool):
    sched = kvrt.Scheduler(pool, kvrt.PrefixCache(pool))
    prompt = list(range(1, 50))
    for _ in range(2):
        sched.add(prompt, max_new_tokens=1)
        run(sched)
    stats = sched.stats()
    assert stats["prefix_hit_rate"] == pytest.approx(48 / 96)
    assert stats["prefix_hit_rate_window"] == pytest.approx(
        stats["window_hit_tokens"] / stats["window_query_tokens"])
    assert ctx.ctl("sched.0.arrivals") == stats["arrivals"] == 0
    assert ctx.ctl("sched.0.prefix_hit_tokens") == 48
    text = ctx.metrics()
    assert "kvrt_sched_prefix_hit_tokens_total" in text, text[:2000]


def test_tenant_salt_and_multimodal_items_key_the_cache(ctx, pool):
    cache = kvrt.PrefixCache(pool)
    sched = kvrt.Scheduler(pool, cache)
    prompt = list(range(1, 50))
    image = ((0x1234, 0x5678), 4, 8)  # tokens 4..11 are an image's
    sched.add(prompt, max_new_tokens=1, salt=b"tenant-a", mm_items=[image])
    run(sched)
    other = sched.add(prompt, max_new_tokens=1, salt=b"tenant-b", mm_items=[image])
    other_image = sched.add(prompt, max_new_tokens=1, salt=b"tenant-a",
                            mm_items=[((0x1234, 0x9999), 4, 8)])
    same = sched.add(prompt, max_new_tokens=1, salt=b"tenant-a", mm_items=[image])
    ended = run(sched)
    assert ended[other]["cached_tokens"] == 0, "another tenant's salt hit"
    assert ended[other_image]["cached_tokens"] == 0, "another image hit"
    assert ended[same]["cached_tokens"] == 48
    assert cache.block_keys(prompt, salt=b"tenant-a", mm_items=[image]) != \
        cache.block_keys(prompt)
    with pytest.raises(kvrt.KvrtError) as e:
        sched.add(prompt, max_new_tokens=1, mm_items=[("not a hash", 4, 8)])
    assert e.value.name == "KVRT_ERR_INVALID_ARG"
    with pytest.raises(kvrt.KvrtError) as e:  # overlapping items
        sched.add(prompt, max_new_tokens=1, mm_items=[image, ((1, 2), 8, 8)])
    assert e.value.name == "KVRT_ERR_INVALID_ARG"
