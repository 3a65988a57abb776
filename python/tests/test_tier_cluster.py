"""Tiers (host DRAM, SSD on a real file) and the cluster directory, events
and router through the Python wrappers, over a real libkvrt."""
import select

import pytest

import kvrt

from test_engine_features import run


def evict_everything(sched, tier, rounds=5):
    """Runs other prompts until the earlier cached blocks are evicted; the
    tier drains between them (it drops what it cannot queue at once)."""
    for r in range(rounds):
        sched.add(list(range(1000 * (r + 1), 1000 * (r + 1) + 65)), max_new_tokens=1)
        run(sched)
        tier.drain()


def test_host_tier_brings_evicted_blocks_back(ctx):
    pool = kvrt.Pool(ctx, kvrt.Layout(2, 2, 16, 16), num_blocks=17)
    cache = kvrt.PrefixCache(pool)
    tier = kvrt.Tier(cache, host_blocks=64, queue_depth=8)
    sched = kvrt.Scheduler(pool, cache)
    prompt = list(range(1, 66))  # 4 full blocks
    sched.add(prompt, max_new_tokens=1)
    run(sched)
    evict_everything(sched, tier)
    tier.drain()
    assert tier.stats()["host"]["offloads"] >= 4
    found = tier.match(prompt)
    assert len(found.pool_blocks) == 0 and found.host_blocks == 4 and found.parent is None
    blocks = pool.alloc(4)
    ticket, started = tier.onload(0, found.tier_hashes, blocks)
    assert started == 4
    done = []
    for _ in range(1000):
        readable, _, _ = select.select([tier.fd()], [], [], 0.01)
        done += tier.poll()
        if done:
            break
    assert done == [dict(ticket=ticket, requested=4, landed=4, miss="none")]
    pool.free(blocks)
    again = tier.match(prompt)
    assert len(again.pool_blocks) == 4, "onloaded blocks were not cached again"
    pool.free(again.pool_blocks)
    assert tier.stats()["host"]["onloads"] == 4
    with pytest.raises(kvrt.KvrtError) as e:
        cache.close()
    assert e.value.name == "KVRT_ERR_BUSY", "a cache under a tier must refuse to close"
    sched.close()
    tier.close()
    cache.verify()
    pool.verify()


def test_ssd_tier_keeps_blocks_in_a_real_file(ctx, tmp_path):
    pool = kvrt.Pool(ctx, kvrt.Layout(2, 2, 16, 16), num_blocks=17)
    cache = kvrt.PrefixCache(pool)
    tier = kvrt.Tier(cache, host_blocks=4, ssd_dir=tmp_path, ssd_blocks=256, buffered=True)
    sched = kvrt.Scheduler(pool, cache)
    prompts = [list(range(100 * p + 1, 100 * p + 66)) for p in range(1, 4)]
    for prompt in prompts:
        sched.add(prompt, max_new_tokens=1)
        run(sched)
    evict_everything(sched, tier)
    tier.drain()
    stats = tier.stats()
    assert stats["ssd"]["offloads"] > 0 and stats["in_flight"] == 0
    assert any(path.stat().st_size > 0 for path in tmp_path.iterdir())
    found = tier.match(prompts[0])
    assert found.ssd_blocks > 0
    with pytest.raises(kvrt.KvrtError) as e:
        kvrt.Tier(cache, host_blocks=4)
    assert e.value.name == "KVRT_ERR_BUSY"


def test_tier_refuses_bad_input(ctx, pool):
    cache = kvrt.PrefixCache(pool)
    with pytest.raises(kvrt.KvrtError) as e:
        kvrt.Tier(cache, host_blocks=0)
    assert e.value.name == "KVRT_ERR_INVALID_ARG"
    with pytest.raises(kvrt.KvrtError) as e:
        kvrt.Tier(cache, host_blocks=4, ssd_dir="/nonexistent/kvrt", ssd_blocks=4)
    assert e.value.name == "KVRT_ERR_INVALID_ARG"
    tier = kvrt.Tier(cache, host_blocks=4)
    with pytest.raises(kvrt.KvrtError) as e:
        tier.onload(0, [(1, 2)], [3, 4])
    assert e.value.name == "KVRT_ERR_INVALID_ARG"
    ctx.close()
    with pytest.raises(kvrt.KvrtError) as e:
        tier.stats()
    assert e.value.name == "KVRT_ERR_BAD_STATE"


def test_cache_events_feed_a_directory_and_the_router_follows_the_prefix(ctx):
    layout = kvrt.Layout(2, 2, 16, 16)
    nodes = {}
    directory = kvrt.Directory(ctx)
    for node_id in (1, 2):
        pool = kvrt.Pool(ctx, layout, num_blocks=64)
        cache = kvrt.PrefixCache(pool, model_id="m")
        events = kvrt.KvEvents(ctx, epoch=node_id * 10)
        events.attach(cache)
        directory.add_node(node_id, cache.fingerprint, events.epoch()[0])
        nodes[node_id] = (kvrt.Scheduler(pool, cache), cache, events)
    prompt = list(range(1, 66))
    sched, cache, events = nodes[2]
    sched.add(prompt, max_new_tokens=1)
    run(sched)
    for node_id, (_, _, node_events) in nodes.items():
        epoch, batch = node_events.take()
        directory.apply(node_id, epoch, batch)
    assert [e.kind for e in batch] == [kvrt.cluster.EVENT_STORED] * 4
    keys = cache.block_keys(prompt)
    assert {(e.key.lo, e.key.hi) for e in batch} == set(keys)
    assert directory.match(cache.fingerprint, keys) == {1: (0, 0), 2: (4, 4)}
    router = kvrt.Router(directory, policy=kvrt.cluster.ROUTE_CACHE_AWARE)
    choice = router.pick(cache.fingerprint, keys, prompt_tokens=len(prompt))
    assert choice["node_id"] == 2 and choice["cached_blocks"] == 4
    directory.set_load(2, queued_prefill_tokens=100000)
    assert router.pick(cache.fingerprint, keys, len(prompt))["node_id"] == 1
    assert directory.node_info(2)["blocks"] == [4, 0, 0]
    assert directory.stats()["events_applied"] == 4
    directory.close()
    assert router.closed
    with pytest.raises(kvrt.KvrtError) as e:
        cache.close()
    assert e.value.name == "KVRT_ERR_BUSY", "a followed cache closed under its publisher"
    sched.close()
    events.detach()
    cache.close()
    nodes[1][0].close()
    nodes[1][2].close()
    nodes[1][1].close()


def test_directory_resynchronizes_from_a_snapshot(ctx):
    directory = kvrt.Directory(ctx)
    events = kvrt.KvEvents(ctx, epoch=5)
    directory.add_node(9, (1, 1), 5)
    for i in range(3):
        events.record(kvrt.cluster.EVENT_STORED, kvrt.cluster.TIER_HOST, (i, i + 1))
    epoch, batch = events.take()
    with pytest.raises(kvrt.KvrtError) as e:  # a gap: event 1 never arrived
        directory.apply(9, epoch, [(e.event_id, e.kind, e.tier, (e.key.lo, e.key.hi))
                                   for e in batch[1:]])
    assert e.value.name == "KVRT_ERR_RESYNC"
    assert directory.node_info(9)["resyncing"] == 1
    assert directory.match((1, 1), [(0, 1)]) == {}, "a resyncing node answered"
    records, last = events.snapshot()
    directory.load_snapshot(9, epoch, last, records)
    assert directory.node_info(9)["resyncing"] == 0
    assert directory.match((1, 1), [(0, 1), (1, 2), (2, 3)], tier_mask=1 << 1) == {9: (3, 0)}
    with pytest.raises(kvrt.KvrtError) as e:
        directory.match((7, 7), [(0, 1)])
    assert e.value.name == "KVRT_ERR_UNKNOWN_MODEL"
    with pytest.raises(kvrt.KvrtError) as e:
        directory.add_node(0, (1, 1), 5)
    assert e.value.name == "KVRT_ERR_INVALID_ARG"
