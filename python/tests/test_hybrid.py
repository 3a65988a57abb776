"""Hybrid models from Python: one scheduler over several cache groups
(kvrt_sched_create_groups), e.g. full-attention layers in one pool and
sliding-window layers, with their own block size, in another. The plan
carries each group's slots and block-table rows; a window group lets the
blocks that left the window go; a prefix hit counts what every group
serves; K/V that arrives is named and reported per group."""
import numpy as np
import pytest

import kvrt
from test_engine_features import run

WINDOW = 8


@pytest.fixture
def pools(ctx):
    full = kvrt.Pool(ctx, kvrt.Layout(2, 2, 16, 8), num_blocks=64)
    window = kvrt.Pool(ctx, kvrt.Layout(1, 2, 16, 4), num_blocks=64)
    return full, window


def hybrid(pools, caches=True, **params):
    full, window = pools
    return kvrt.Scheduler(groups=[
        kvrt.CacheGroup(full, kvrt.PrefixCache(full) if caches else None),
        kvrt.CacheGroup(window, kvrt.PrefixCache(window) if caches else None,
                        sliding_window=WINDOW)], **params)


def slots_of(blocks, tokens_per_block, positions):
    positions = np.asarray(positions)
    return blocks[positions // tokens_per_block].astype(np.int64) * tokens_per_block + \
        positions % tokens_per_block


def test_every_group_has_its_slots_and_rows(pools):
    sched = hybrid(pools)
    assert sched.pool is pools[0] and len(sched.groups) == 2
    rid = sched.add(list(range(1, 30)), max_new_tokens=12)
    plan = sched.step(0)
    assert plan.num_groups == 2
    assert [g.tokens_per_block for g in plan.groups] == [8, 4]
    assert [g.sliding_window for g in plan.groups] == [0, WINDOW]
    assert np.array_equal(plan.groups[0].slot_mapping, plan.slot_mapping)
    row = plan.row_index[0]
    for g, part in enumerate(plan.groups):
        blocks, tokens = sched.seq_blocks(rid, group=g)
        assert np.array_equal(part.block_rows[row][:len(blocks)], blocks)
        # every prompt token's K/V is written in every group, the window's too
        assert np.array_equal(part.slot_mapping,
                              slots_of(blocks, part.tokens_per_block, plan.positions))
    sched.commit(plan, [7])
    # An engine mirroring the rows on its device copies only the rows each
    # plan lists as changed (in every group): that must keep them equal.
    mirrors = [np.array(part.block_rows) for part in plan.groups]
    for _ in range(8):
        plan = sched.step(0)
        changed = plan.rows_changed
        for mirror, part in zip(mirrors, plan.groups):
            mirror[changed] = part.block_rows[changed]
            assert np.array_equal(mirror[plan.row_index], part.block_rows[plan.row_index])
        sched.commit(plan, [7])
    full_blocks, tokens = sched.seq_blocks(rid, group=0)
    window_blocks, _ = sched.seq_blocks(rid, group=1)
    assert tokens == 37 and kvrt.NULL_BLOCK not in full_blocks  # 29 + 8 inputs
    # The window group holds the blocks the next query (position 37) reads,
    # 30..37, and let the ones before go.
    held = np.flatnonzero(window_blocks != kvrt.NULL_BLOCK)
    assert held.tolist() == list(range((37 - WINDOW + 1) // 4, len(window_blocks)))
    assert pools[1].info()["used_blocks"] == len(held)
    assert run(sched, token=7)[rid]["output"] == [7] * 12
    for pool in pools:
        pool.verify()
    sched.close()
    assert [p.info()["used_blocks"] for p in pools] == [0, 0]


def test_a_hit_counts_what_every_group_serves(pools):
    sched = hybrid(pools)
    prompt = list(range(1, 42))
    first = sched.add(prompt, max_new_tokens=3)
    run(sched, token=5)
    second = sched.add(prompt, max_new_tokens=3)
    ended = run(sched, token=5)[second]
    # 40 tokens are cached in whole blocks of both groups; the window group
    # still holds the blocks the first uncached token reads.
    assert ended["cached_tokens"] == 40 and ended["output"] == [5, 5, 5]
    assert first != second
    full_cache, window_cache = (g.cache for g in sched.groups)
    assert full_cache.stats()["hit_tokens"] == 40
    full_cache.verify()
    window_cache.verify()


def test_kv_arrives_in_every_group(pools):
    sched = hybrid(pools, caches=False)
    rid = sched.add(list(range(1, 30)), max_new_tokens=2)
    with pytest.raises(kvrt.KvrtError) as e:
        sched.await_kv(rid, 24)  # names one group's blocks only
    assert e.value.name == "KVRT_ERR_UNSUPPORTED"
    arrival, (full_blocks, window_blocks) = sched.await_kv_groups(rid, 24)
    assert len(full_blocks) == 3
    # the window the first recomputed token (position 24) reads: 17..24
    assert len(window_blocks) == 2 and kvrt.NULL_BLOCK not in window_blocks
    sched.arrival_complete(arrival, len(full_blocks), group=0)
    assert sched.info(rid)["state"] == "waiting_kv", "one group of two reported"
    assert len(sched.step(0)) == 0
    sched.arrival_complete(arrival, len(window_blocks), group=1)
    plan = sched.step(0)
    assert plan.seqs[0]["num_computed_tokens"] == 24
    sched.commit(plan, [9])
    assert run(sched, token=9)[rid]["output_tokens"] == 2
    assert sched.stats()["arrived_tokens"] == 24
    for pool in pools:
        pool.verify()


def test_groups_sharing_a_pool_take_distinct_slots_and_their_own_hits(ctx):
    # Full attention and a window in one pool and cache: one memory, and
    # each group's blocks of the same tokens are its own.
    pool = kvrt.Pool(ctx, kvrt.Layout(1, 2, 16, 4), num_blocks=40)
    cache = kvrt.PrefixCache(pool)
    sched = kvrt.Scheduler(groups=[kvrt.CacheGroup(pool, cache),
                                   kvrt.CacheGroup(pool, cache, sliding_window=WINDOW)])
    prompt = list(range(1, 30))
    first = sched.add(prompt, max_new_tokens=3)
    plan = sched.step(0)
    full_slots, window_slots = (set(part.slot_mapping.tolist()) for part in plan.groups)
    assert len(full_slots) == len(window_slots) == 29 and not full_slots & window_slots
    sched.commit(plan, [5])
    run(sched, token=5)
    second = sched.add(prompt, max_new_tokens=3)
    plan = sched.step(0)
    assert plan.seqs[0]["num_computed_tokens"] == 28
    full_blocks = set(sched.seq_blocks(second, group=0)[0].tolist())
    window_blocks = set(sched.seq_blocks(second, group=1)[0].tolist()) - {kvrt.NULL_BLOCK}
    assert window_blocks and not full_blocks & window_blocks
    sched.commit(plan, [5])
    assert run(sched, token=5)[second]["output"] == [5, 5, 5] and first != second
    pool.verify()
    cache.verify()
    assert pool.info()["used_blocks"] == 0


def refused(call, name="KVRT_ERR_INVALID_ARG"):
    with pytest.raises(kvrt.KvrtError) as e:
        call()
    assert e.value.name == name, e.value
    return e.value


def test_hybrid_calls_refuse_bad_input(ctx, pools):
    full, window = pools
    group = kvrt.CacheGroup(window, sliding_window=WINDOW)
    refused(lambda: kvrt.Scheduler(groups=[]))
    refused(lambda: kvrt.Scheduler(groups=[full]))
    refused(lambda: kvrt.Scheduler(groups=group))
    refused(lambda: kvrt.Scheduler(full, groups=[group]))
    refused(lambda: kvrt.Scheduler(groups=[group] * 9))
    refused(lambda: kvrt.CacheGroup("pool"))
    refused(lambda: kvrt.CacheGroup(full, cache=full))
    refused(lambda: kvrt.CacheGroup(full, sliding_window=-1))
    assert refused(lambda: kvrt.Scheduler(full, cache=5)).function == "Scheduler"
    # A group changed after it was made is checked again (ctypes would
    # wrap 2**32 + 8 to 8 and take True for 1).
    changed = kvrt.CacheGroup(window, sliding_window=WINDOW)
    for bad in (2 ** 32 + 8, True, None):
        changed.sliding_window = bad
        refused(lambda: kvrt.Scheduler(groups=[kvrt.CacheGroup(full), changed]))
    # kvrt's own checks: caches on some groups only (of separate pools, or
    # of one pool that two groups share)
    shared_cache = kvrt.PrefixCache(full)
    refused(lambda: kvrt.Scheduler(groups=[kvrt.CacheGroup(full, shared_cache), group]))
    refused(lambda: kvrt.Scheduler(groups=[kvrt.CacheGroup(full, shared_cache),
                                           kvrt.CacheGroup(full)]))
    assert [p.info()["used_blocks"] for p in pools] == [0, 0]

    sched = hybrid(pools, caches=False)
    rid = sched.add(list(range(1, 20)), max_new_tokens=4)
    refused(lambda: sched.seq_blocks(rid, group=2))
    refused(lambda: sched.seq_blocks(rid, group=-1))
    arrival, _ = sched.await_kv_groups(rid, 16)
    refused(lambda: sched.arrival_complete(arrival, 0, group=2))
    sched.arrival_complete(arrival, 0, group=0)
    sched.arrival_complete(arrival, 0, group=1)  # nothing landed: recomputed
    plan = sched.step(0)
    part = plan.groups[1]
    with pytest.raises(AttributeError):
        part.no_such_field
    sched.commit(plan, [3] if plan.seqs[0]["sample"] else [])
    sched.step(0)  # the plan is stale now, and so is its groups' part
    refused(lambda: part.slot_mapping, "KVRT_ERR_BAD_STATE")
    sched.close()
    refused(lambda: sched.seq_blocks(rid, group=0), "KVRT_ERR_BAD_STATE")
