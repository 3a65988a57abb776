/*
 * tier_offload.c - moving blocks down: the cache's eviction sink (pool ->
 * host), clean-ahead and write-through copies of blocks the cache still
 * holds, write-back from host to SSD, their completions, and the SSD file
 * lost under kvrt.
 *
 *   offload   the cache evicts block b -> the sink takes a free host slot,
 *             keeps b (KVRT_CACHE_SINK_KEEP) and queues b -> slot; when the
 *             copy is done, poll frees b and indexes the slot. No free slot
 *             or a full queue: the victim is dropped and counted.
 *   write-back  poll and the sink keep at least queue_depth host slots free
 *             or on their way out: the least recently used host slot is
 *             written to an SSD slot (the SSD tier evicting its own least
 *             recently used block when full), then freed. Without an SSD
 *             tier it is simply dropped.
 * Engine thread only; the copies and writes run on the tier's worker.
 */
#include <string.h>

#include "kv/pool_internal.h"
#include "tier/tier_internal.h"

/* How often poll checks that the SSD file is still the one it opened. */
#define FILE_CHECK_NS 10000000ull

/* An SSD slot for a write-back, evicting the SSD tier's LRU block if full. */
static int32_t ssd_slot_for_write(kvrt_tier_t *t)
{
    int32_t slot = tier_dir_take(&t->ssd);
    if (slot >= 0)
        return slot;
    int32_t victim = tier_dir_lru(&t->ssd);
    if (victim < 0)
        return -1;
    tier_dir_release(&t->ssd, victim);
    t->ssd_stats.evictions++;
    return tier_dir_take(&t->ssd);
}

/* Frees or starts freeing host slots until queue_depth are free or on
 * their way out: write-back, so that offloads find a slot at once. */
void tier_make_room(kvrt_tier_t *t)
{
    while (t->host.free_count + t->writebacks < t->queue_depth) {
        int32_t victim = tier_dir_lru(&t->host);
        if (victim < 0)
            return;
        const kvrt_cache_block_name_t *name = &t->host.names[victim];
        bool below = t->has_ssd && !t->file_lost && tier_dir_find(&t->ssd, &name->key) >= 0;
        int32_t ssd_slot = t->has_ssd && !t->file_lost && !below ? ssd_slot_for_write(t) : -1;
        if (ssd_slot >= 0) {
            tier_job_t job = {.kind = JOB_WRITE, .host_slot = victim, .ssd_slot = ssd_slot,
                              .name = *name};
            if (!tier_submit(t, &job)) {
                tier_dir_release(&t->ssd, ssd_slot);
                return; /* the queue is full: try again at the next poll */
            }
            tier_dir_pin(&t->host, victim);
            t->host.evicting[victim] = 1;
            t->writebacks++;
            continue;
        }
        if (t->has_ssd && !below)
            t->ssd_stats.drops++;
        tier_dir_release(&t->host, victim);
        t->host_stats.evictions++;
    }
}

kvrt_cache_sink_verdict_t tier_sink(void *user, const kvrt_cache_victim_t *victim)
{
    kvrt_tier_t *t = user;
    uint8_t *ahead = &t->ahead[victim->block];
    if (victim->discard) {
        /* A reset: nothing of it goes below. A copy reading it keeps it
         * until it ends (it is then of the old epoch: published nowhere). */
        if (*ahead != AHEAD_COPYING)
            return KVRT_CACHE_SINK_DROP;
        *ahead = AHEAD_KEPT;
        return KVRT_CACHE_SINK_KEEP;
    }
    tier_sync_reset(t);
    const kvrt_cache_block_name_t *name = &victim->name;
    if (*ahead == AHEAD_COPYING) {
        *ahead = victim->may_keep ? AHEAD_KEPT : AHEAD_TORN;
        return victim->may_keep ? KVRT_CACHE_SINK_KEEP : KVRT_CACHE_SINK_DROP;
    }
    int32_t below = tier_dir_find(&t->host, &name->key);
    if (below >= 0) { /* already in host memory: that copy is as good */
        tier_dir_touch(&t->host, below);
        return KVRT_CACHE_SINK_DROP;
    }
    if (t->has_ssd && tier_dir_find(&t->ssd, &name->key) >= 0)
        return KVRT_CACHE_SINK_DROP;
    /* The cache offers victims until an allocation has what it needs, and
     * every block kept makes it take one more: keeping at most queue_depth
     * copies in flight bounds how far ahead of demand the pool is emptied. */
    bool keep = victim->may_keep && t->demotes < t->queue_depth;
    int32_t slot = keep ? tier_dir_take(&t->host) : -1;
    tier_job_t job = {.kind = JOB_DEMOTE, .block = victim->block, .host_slot = slot,
                      .name = *name};
    if (slot < 0 || !tier_submit(t, &job)) {
        if (slot >= 0)
            tier_dir_release(&t->host, slot);
        t->host_stats.drops++;
        tier_make_room(t);
        return KVRT_CACHE_SINK_DROP;
    }
    t->demotes++;
    tier_make_room(t);
    return KVRT_CACHE_SINK_KEEP;
}

/* Starts copying a block the cache still holds into a host slot (see
 * enum ahead_state); false when no slot is free or the queue is full. */
bool tier_copy_ahead(kvrt_tier_t *t, int32_t b, const kvrt_cache_block_name_t *name)
{
    if (!t->host.free_count)
        tier_make_room(t);
    int32_t slot = tier_dir_take(&t->host);
    if (slot < 0)
        return false;
    tier_job_t job = {.kind = JOB_DEMOTE, .block = b, .host_slot = slot, .name = *name,
                      .ahead = true};
    if (!tier_submit(t, &job)) {
        tier_dir_release(&t->host, slot);
        return false;
    }
    t->ahead[b] = AHEAD_COPYING;
    t->demotes++;
    return true;
}

/* Copies the blocks next in line for eviction into host slots while the
 * cache still holds them, so that when they are evicted the sink finds
 * them below already and an allocation loses nothing. Runs in
 * kvrt_tier_poll, at most queue_depth copies in flight, and looks at most
 * half the host slots ahead that write-back does not keep free: a copy made
 * ahead then stays among the host's most recent blocks until the pool has
 * evicted it, so nothing is copied twice. */
void tier_clean_ahead(kvrt_tier_t *t)
{
    if (t->ahead_skip) { /* copies failed lately (a device refusing them) */
        t->ahead_skip--;
        return;
    }
    uint32_t reserve = t->queue_depth < t->host.num_slots ? t->queue_depth : t->host.num_slots;
    uint32_t window = (t->host.num_slots - reserve) / 2;
    if (window > AHEAD_WINDOW * t->queue_depth)
        window = AHEAD_WINDOW * t->queue_depth;
    if (!window || t->demotes >= t->queue_depth)
        return; /* nothing could start: not worth a look */
    /* A complete scan is not repeated until the eviction tail may hold a
     * block it did not see near the front. Each eviction, insert, block
     * hit (taken out of the evictable set) or block leaving a tier moves
     * at most one unseen or uncovered block into the window; with the LRU
     * policies they enter at its far end, so after fewer than window/4 of
     * them at least 3/4 of the window is still covered, and the next scan
     * comes well before the pool evicts that far. (Policies that put new
     * blocks near the front, adaptive's probation, may meanwhile evict one
     * unseen: the sink then copies it at eviction, as without clean-ahead.)
     * In a steady state the scan was most of what a poll cost the engine
     * thread; now it runs once per window/4 changes, about 4 x 20
     * instructions per change whatever the window. */
    kvrt_cache_stats_t cs;
    kvrt_cache_stats(t->cache, &cs);
    uint64_t clock = cs.inserts + cs.evictions + cs.hit_tokens / t->tokens_per_block +
                     t->host_stats.evictions + t->host_stats.errors + t->ssd_stats.evictions +
                     t->ssd_stats.errors + t->ssd_stats.drops;
    if (t->ahead_settled && t->ahead_file_lost == t->file_lost &&
        clock - t->ahead_clock < t->ahead_slack)
        return;
    t->ahead_settled = false;
    uint32_t n = kvrt_cache_peek_victims(t->cache, t->peek_blocks, t->peek_names, window);
    uint32_t i = 0;
    for (; i < n && t->demotes < t->queue_depth; i++) {
        int32_t b = t->peek_blocks[i];
        const kvrt_cache_block_name_t *name = &t->peek_names[i];
        if (t->ahead[b] != AHEAD_NONE || tier_dir_find(&t->host, &name->key) >= 0 ||
            (t->has_ssd && tier_dir_find(&t->ssd, &name->key) >= 0))
            continue;
        if (!tier_copy_ahead(t, b, name))
            return;
    }
    if (i == n) {
        /* A scan that found fewer victims than the window saw every
         * evictable block: the next one inserted is in the window at
         * once, near its front, and an allocation may take it before a
         * rescan copied it. Then any change brings a rescan. */
        t->ahead_slack = n < window ? 1 : (window / 4 ? window / 4 : 1);
        t->ahead_settled = true;
        t->ahead_clock = clock;
        t->ahead_file_lost = t->file_lost;
    }
}

/* Write-through: a pool block hit wt_hits times is copied to host memory
 * while it is still in use, so a later eviction finds it below whatever
 * the queue is doing then. Like clean-ahead it never waits: no free host
 * slot or a full queue skips the block (its next hit tries again). */
void tier_write_through(kvrt_tier_t *t, const int32_t *blocks,
                          const kvrt_block_hash_t *contents, uint32_t n,
                          const kvrt_hash_keys_t *keys)
{
    kvrt_block_hash_t parent_key = {0, 0};
    for (uint32_t i = 0; i < n; i++) {
        int32_t b = blocks[i];
        kvrt_cache_block_name_t name = {.content = contents[i], .depth = i};
        kvrt_block_key(&contents[i], keys, &name.key); /* keys checked by the match */
        if (i) {
            name.parent_key = parent_key;
            name.flags = KVRT_CACHE_NAME_HAS_PARENT;
        }
        parent_key = name.key;
        if (t->hit_key[b] != name.key.lo) {
            t->hit_key[b] = name.key.lo;
            t->hit_count[b] = 0;
        }
        if (t->hit_count[b] < UINT16_MAX)
            t->hit_count[b]++;
        if (t->hit_count[b] < t->wt_hits || t->ahead[b] != AHEAD_NONE ||
            t->demotes >= t->queue_depth || tier_dir_find(&t->host, &name.key) >= 0 ||
            (t->has_ssd && tier_dir_find(&t->ssd, &name.key) >= 0))
            continue;
        if (!tier_copy_ahead(t, b, &name))
            return;
        t->write_throughs++;
    }
}

void tier_log_ssd_failure(kvrt_tier_t *t, const tier_job_t *job, const char *what)
{
    t->ssd_stats.errors++;
    kvrt_log(t->ctx, KVRT_LOG_WARN, "tier: %s of SSD slot %d in %s failed: %s; block dropped",
             what, job->ssd_slot, t->file.path,
             job->err ? strerror(job->err) : "header or checksum does not verify");
}

void tier_finish_write(kvrt_tier_t *t, const tier_job_t *job)
{
    if (tier_stale(t, job->epoch)) { /* a block of before a reset: not indexed */
        tier_ssd_discard(t->ctx, &t->file, (uint32_t)job->ssd_slot, 1);
        tier_dir_release(&t->ssd, job->ssd_slot);
        t->ssd_stats.drops++;
    } else if (!job->err) {
        tier_dir_publish(&t->ssd, job->ssd_slot, &job->name);
        t->ssd_stats.offloads++;
    } else {
        tier_dir_release(&t->ssd, job->ssd_slot);
        t->ssd_stats.drops++;
        tier_log_ssd_failure(t, job, "write");
    }
    t->writebacks--;
    int32_t h = job->host_slot;
    t->host.evicting[h] = 0;
    tier_dir_unpin(&t->host, h); /* one a reset forgot is freed here */
    if (!t->host.pins[h] && t->host.state[h] != SLOT_FREE) { /* nobody reads it meanwhile */
        tier_dir_release(&t->host, h);
        t->host_stats.evictions++;
    }
}

/* A pool -> host copy ended (sink, clean-ahead or write-through). */
void tier_finish_demote(kvrt_tier_t *t, const tier_job_t *job)
{
    t->demotes--;
    uint8_t state = job->ahead ? t->ahead[job->block] : AHEAD_KEPT;
    t->ahead[job->block] = AHEAD_NONE;
    if (state == AHEAD_KEPT)
        kvrt_pool_free(t->pool, 1, &job->block);
    if (job->ahead && job->err) {
        /* Back off, or a failing device is retried on every poll. */
        t->ahead_backoff = t->ahead_backoff ? 2 * t->ahead_backoff : 1;
        if (t->ahead_backoff > 1024)
            t->ahead_backoff = 1024;
        t->ahead_skip = t->ahead_backoff;
    } else if (job->ahead) {
        t->ahead_backoff = 0;
    }
    /* Torn, failed, or of before a reset: the cache's reset frees idle
     * blocks without asking the sink, so a copy still running may have
     * read a block already reused. */
    if (state == AHEAD_TORN || job->err || tier_stale(t, job->epoch)) {
        tier_dir_release(&t->host, job->host_slot);
        t->host_stats.drops++;
        t->host_stats.errors += job->err != 0;
        return;
    }
    tier_dir_publish(&t->host, job->host_slot, &job->name);
    t->host_stats.offloads++;
}

/* The file is gone or replaced: nothing on it can be trusted to be ours. */
void tier_check_file(kvrt_tier_t *t)
{
    if (!t->has_ssd)
        return;
    if (!t->file_lost) {
        /* Two system calls: at most every FILE_CHECK_NS, not every poll. */
        uint64_t now = kvrt_now_ns();
        if (now < t->next_file_check_ns)
            return;
        t->next_file_check_ns = now + FILE_CHECK_NS;
    }
    if (!t->file_lost && tier_ssd_lost(&t->file)) {
        t->file_lost = true;
        t->ssd_stats.errors++;
        kvrt_log(t->ctx, KVRT_LOG_ERROR, "tier: %s was deleted or replaced; dropping the "
                 "SSD tier's %u blocks", t->file.path, t->ssd.used);
    }
    if (!t->file_lost)
        return;
    for (uint32_t s = 0; s < t->ssd.num_slots; s++)
        if (t->ssd.state[s] == SLOT_READY && !t->ssd.pins[s]) {
            tier_dir_release(&t->ssd, (int32_t)s);
            t->ssd_stats.drops++;
        }
    if (t->in_flight)
        return; /* the worker may still use the old descriptor */
    ssd_file_t fresh;
    bool buffered = t->file.buffered;
    if (tier_ssd_open(t->ctx, &fresh, t->ssd_dir, &t->root, t->file.layout_hash,
                      t->file.block_bytes, buffered) == KVRT_OK) {
        tier_ssd_close(&t->file);
        t->file = fresh;
        t->file_lost = false;
        tier_ssd_reserve(t->ctx, &t->file, t->ssd.num_slots);
        kvrt_log(t->ctx, KVRT_LOG_WARN, "tier: %s created again", t->file.path);
    }
}

/* Forgets every READY slot of d; returns how many. With `file`, the disk
 * range of each is given back too, in runs, so that a restart does not
 * index them again (a run still being read reads zeros, and fails as it
 * would anyway: its job is of the old epoch). */
static uint32_t forget_level(kvrt_tier_t *t, slot_dir_t *d, const ssd_file_t *file)
{
    uint32_t forgotten = 0, run = 0;
    for (uint32_t s = 0; s <= d->num_slots; s++) {
        if (s < d->num_slots && d->state[s] == SLOT_READY) {
            tier_dir_forget(d, (int32_t)s);
            forgotten++;
            run++;
            continue;
        }
        if (run && file)
            tier_ssd_discard(t->ctx, file, s - run, run);
        run = 0;
    }
    return forgotten;
}

void tier_sync_reset(kvrt_tier_t *t)
{
    const uint64_t resets = kvrt_cache_resets(t->cache);
    if (KVRT_LIKELY(resets == t->resets))
        return;
    t->resets = resets;
    uint32_t host = forget_level(t, &t->host, NULL);
    uint32_t ssd = t->has_ssd ? forget_level(t, &t->ssd, t->file_lost ? NULL : &t->file) : 0;
    t->host_stats.drops += host;
    t->ssd_stats.drops += ssd;
    /* The pool's blocks are not the ones clean-ahead last looked at. */
    t->ahead_settled = false;
    kvrt_log(t->ctx, KVRT_LOG_INFO, "tier: the cache was reset; %u host and %u SSD blocks "
             "of before it dropped", host, ssd);
}
