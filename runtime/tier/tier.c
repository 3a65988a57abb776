/*
 * tier.c - the tier stack under a prefix cache (include/kvrt/tier.h):
 * offload through the cache's eviction sink, write-back from host to SSD,
 * match and onload, and the completions that tie them together.
 *
 * Block life, all on the engine thread except the copies and I/O:
 *   offload   the cache evicts block b -> the sink takes a free host slot,
 *             keeps b (KVRT_CACHE_SINK_KEEP) and queues b -> slot; when the
 *             copy is done, poll frees b and indexes the slot. No free slot
 *             or a full queue: the victim is dropped and counted.
 *   write-back  poll and the sink keep at least queue_depth host slots free
 *             or on their way out: the least recently used host slot is
 *             written to an SSD slot (the SSD tier evicting its own least
 *             recently used block when full), then freed. Without an SSD
 *             tier it is simply dropped.
 *   onload    a host block is copied into the caller's pool block; an SSD
 *             block is read into a free host slot, verified, then copied.
 *             When every block of a ticket is done, poll inserts the leading
 *             landed run into the cache and reports the ticket.
 * Faults: an I/O error, a full disk, a short read (file truncated), a
 * header or checksum that does not verify: the SSD slot is dropped, the
 * failure counted and logged, the onload's block reported with its reason.
 * A file deleted or replaced under kvrt: every SSD block is dropped and the
 * file is created again once nothing is in flight.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "kv/pool_internal.h"
#include "tier/tier_internal.h"

#define MAX_TICKETS 64u
#define HUGEPAGE (2u << 20)
/* Clean-ahead looks at most this many queue depths of victims ahead: about
 * what a long prompt's allocation evicts at once. */
#define AHEAD_WINDOW 16u
#define MAX_ONLOAD_BLOCKS 65536u

/* A clean-ahead copy of a block the cache still holds (no reference): if
 * the cache evicts it meanwhile, the sink keeps it until the copy is done,
 * or, when it may not keep it, marks the copy torn (the block is reused at
 * once) so the copy is thrown away. */
enum ahead_state { AHEAD_NONE = 0, AHEAD_COPYING = 1, AHEAD_KEPT = 2, AHEAD_TORN = 3 };

typedef enum block_fate { FATE_PENDING = 0, FATE_LANDED = 1, FATE_FAILED = 2 } block_fate_t;

typedef struct ticket {
    uint64_t id;             /* 0: free */
    uint32_t count, accepted, pending;
    uint32_t next;           /* first block not started yet (< accepted: retried in poll) */
    kvrt_tier_miss_t miss;   /* of the first block not accepted */
    int32_t *blocks;
    kvrt_cache_block_name_t *names;
    uint8_t *fate;
    kvrt_tier_miss_t *misses;
    kvrt_sched_t *sched;     /* kvrt_tier_admit: the arrival this ticket completes */
    kvrt_arrival_id_t arrival;
} ticket_t;

struct kvrt_tier {
    kvrt_owned_t owned;      /* first: kvrt_ctx_destroy() tears a forgotten tier down */
    kvrt_ctx_t *ctx;
    kvrt_cache_t *cache;
    kvrt_pool_t *pool;
    uint32_t group_id;
    uint32_t queue_depth;
    kvrt_block_hash_t root;
    slot_dir_t host, ssd;
    bool has_ssd;
    ssd_file_t file;
    bool file_lost;
    char ssd_dir[4096];
    void *slab_raw;          /* what kvrt_host_alloc returned */
    uint8_t *slab;           /* host slots: slab_raw rounded up to 2 MiB */
    bool slab_pinned;        /* by the device's pin (device pools) */
    tier_worker_t worker;
    tier_job_t *done;        /* poll's buffer */
    uint32_t in_flight;
    uint32_t writebacks;     /* host slots on their way to SSD */
    uint32_t demotes;        /* pool -> host copies in flight */
    uint8_t *ahead;          /* per pool block: enum ahead_state */
    uint32_t ahead_backoff;  /* polls clean-ahead pauses after a failed copy */
    uint32_t ahead_skip;     /* polls left in the current pause */
    uint32_t wt_hits;        /* write-through after this many pool hits (0: off) */
    uint16_t *hit_count;     /* per pool block: pool hits kvrt_tier_match saw ... */
    uint64_t *hit_key;       /* ... for the block cached under this key */
    bool ahead_settled;      /* the last scan left nothing to copy ... */
    uint64_t ahead_sig[8];   /* ... in this state of cache and tiers */
    int32_t *peek_blocks;    /* clean-ahead candidates, AHEAD_WINDOW x queue_depth */
    kvrt_cache_block_name_t *peek_names;
    kvrt_tier_level_stats_t host_stats, ssd_stats;
    ticket_t tickets[MAX_TICKETS];
    uint64_t next_ticket;
    kvrt_tier_completion_t *ready; /* finished tickets not yet reported */
    uint32_t ready_count;
    tier_admit_stats_t admit_stats;
    uint64_t write_throughs; /* blocks copied by write-through */
};

static void advance(kvrt_tier_t *t, ticket_t *k);

/* ---- ctl nodes ---------------------------------------------------------------- */

#define LEVEL_GETTER(field)                                                      \
    static void get_##field(void *obj, kvrt_ctl_value_t *v)                      \
    {                                                                            \
        v->u64 = ((const kvrt_tier_level_stats_t *)obj)->field;                  \
    }
LEVEL_GETTER(capacity_blocks)
LEVEL_GETTER(used_blocks)
LEVEL_GETTER(hits)
LEVEL_GETTER(offloads)
LEVEL_GETTER(onloads)
LEVEL_GETTER(drops)
LEVEL_GETTER(errors)
LEVEL_GETTER(evictions)

static const kvrt_ctl_node_t level_nodes[] = {
    {"capacity_blocks", KVRT_CTL_U64, get_capacity_blocks, NULL, KVRT_CTL_METRIC_GAUGE,
     "Blocks this tier level can hold."},
    {"used_blocks", KVRT_CTL_U64, get_used_blocks, NULL, KVRT_CTL_METRIC_GAUGE,
     "Blocks this tier level holds now."},
    {"hits", KVRT_CTL_U64, get_hits, NULL, KVRT_CTL_METRIC_COUNTER,
     "Blocks found in this tier level by a match."},
    {"offloads", KVRT_CTL_U64, get_offloads, NULL, KVRT_CTL_METRIC_COUNTER,
     "Blocks copied into this tier level."},
    {"onloads", KVRT_CTL_U64, get_onloads, NULL, KVRT_CTL_METRIC_COUNTER,
     "Blocks copied out of this tier level towards the pool."},
    {"drops", KVRT_CTL_U64, get_drops, NULL, KVRT_CTL_METRIC_COUNTER,
     "Blocks not offloaded because this tier level was busy or full."},
    {"errors", KVRT_CTL_U64, get_errors, NULL, KVRT_CTL_METRIC_COUNTER,
     "I/O, copy or integrity errors in this tier level (the block is dropped)."},
    {"evictions", KVRT_CTL_U64, get_evictions, NULL, KVRT_CTL_METRIC_COUNTER,
     "Blocks this tier level evicted to make room."},
};

static void refresh_used(kvrt_tier_t *t)
{
    t->host_stats.used_blocks = t->host.used;
    t->ssd_stats.used_blocks = t->has_ssd ? t->ssd.used : 0;
}

/* ---- moving blocks down ---------------------------------------------------- */

static bool submit(kvrt_tier_t *t, const tier_job_t *job)
{
    if (!tier_worker_submit(&t->worker, job))
        return false;
    t->in_flight++;
    return true;
}

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
static void make_room(kvrt_tier_t *t)
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
            if (!submit(t, &job)) {
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

static kvrt_cache_sink_verdict_t sink(void *user, const kvrt_cache_victim_t *victim)
{
    kvrt_tier_t *t = user;
    const kvrt_cache_block_name_t *name = &victim->name;
    uint8_t *ahead = &t->ahead[victim->block];
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
    if (slot < 0 || !submit(t, &job)) {
        if (slot >= 0)
            tier_dir_release(&t->host, slot);
        t->host_stats.drops++;
        make_room(t);
        return KVRT_CACHE_SINK_DROP;
    }
    t->demotes++;
    make_room(t);
    return KVRT_CACHE_SINK_KEEP;
}

/* Copies the blocks next in line for eviction into host slots while the
 * cache still holds them, so that when they are evicted the sink finds
 * them below already and an allocation loses nothing. Runs in
 * kvrt_tier_poll, at most queue_depth copies in flight, and looks at most
 * half the host slots ahead that write-back does not keep free: a copy made
 * ahead then stays among the host's most recent blocks until the pool has
 * evicted it, so nothing is copied twice. */
/* Starts copying a block the cache still holds into a host slot (see
 * enum ahead_state); false when no slot is free or the queue is full. */
static bool copy_ahead(kvrt_tier_t *t, int32_t b, const kvrt_cache_block_name_t *name)
{
    if (!t->host.free_count)
        make_room(t);
    int32_t slot = tier_dir_take(&t->host);
    if (slot < 0)
        return false;
    tier_job_t job = {.kind = JOB_DEMOTE, .block = b, .host_slot = slot, .name = *name,
                      .ahead = true};
    if (!submit(t, &job)) {
        tier_dir_release(&t->host, slot);
        return false;
    }
    t->ahead[b] = AHEAD_COPYING;
    t->demotes++;
    return true;
}

static void clean_ahead(kvrt_tier_t *t)
{
    if (t->ahead_skip) { /* copies failed lately (a device refusing them) */
        t->ahead_skip--;
        return;
    }
    uint32_t reserve = t->queue_depth < t->host.num_slots ? t->queue_depth : t->host.num_slots;
    uint32_t window = (t->host.num_slots - reserve) / 2;
    if (window > AHEAD_WINDOW * t->queue_depth)
        window = AHEAD_WINDOW * t->queue_depth;
    if (!window)
        return;
    /* A scan that found nothing left to copy is not repeated until the
     * cache's evictable set or the tiers' contents may have changed: in a
     * steady state most polls would otherwise look up the same window. */
    kvrt_cache_stats_t cs;
    kvrt_cache_stats(t->cache, &cs);
    uint64_t sig[8] = {cs.inserts, cs.evictions, cs.queries, cs.evictable_blocks,
                       t->host_stats.evictions + t->host_stats.errors,
                       t->ssd_stats.evictions + t->ssd_stats.errors + t->ssd_stats.drops,
                       t->file_lost, window};
    if (t->ahead_settled && !memcmp(sig, t->ahead_sig, sizeof(sig)))
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
        if (!copy_ahead(t, b, name))
            return;
    }
    if (i == n) {
        t->ahead_settled = true;
        memcpy(t->ahead_sig, sig, sizeof(sig));
    }
}

/* ---- completions ---------------------------------------------------------- */

static void fail_block(kvrt_tier_t *t, const tier_job_t *job, kvrt_tier_miss_t miss)
{
    ticket_t *k = &t->tickets[job->ticket_slot];
    k->fate[job->position] = FATE_FAILED;
    k->misses[job->position] = miss;
    k->pending--;
}

static void log_ssd_failure(kvrt_tier_t *t, const tier_job_t *job, const char *what)
{
    t->ssd_stats.errors++;
    kvrt_log(t->ctx, KVRT_LOG_WARN, "tier: %s of SSD slot %d in %s failed: %s; block dropped",
             what, job->ssd_slot, t->file.path,
             job->err ? strerror(job->err) : "header or checksum does not verify");
}

static void finish_write(kvrt_tier_t *t, const tier_job_t *job)
{
    if (!job->err) {
        tier_dir_publish(&t->ssd, job->ssd_slot, &job->name);
        t->ssd_stats.offloads++;
    } else {
        tier_dir_release(&t->ssd, job->ssd_slot);
        t->ssd_stats.drops++;
        log_ssd_failure(t, job, "write");
    }
    t->writebacks--;
    int32_t h = job->host_slot;
    t->host.evicting[h] = 0;
    tier_dir_unpin(&t->host, h);
    if (!t->host.pins[h]) { /* nobody started reading it meanwhile */
        tier_dir_release(&t->host, h);
        t->host_stats.evictions++;
    }
}

static void finish_read(kvrt_tier_t *t, const tier_job_t *job)
{
    tier_dir_unpin(&t->ssd, job->ssd_slot);
    if (job->err || job->miss != KVRT_TIER_MISS_NONE) {
        if (!t->ssd.pins[job->ssd_slot])
            tier_dir_release(&t->ssd, job->ssd_slot);
        log_ssd_failure(t, job, "read");
        tier_dir_release(&t->host, job->host_slot);
        fail_block(t, job, job->miss != KVRT_TIER_MISS_NONE ? job->miss : KVRT_TIER_MISS_IO);
        return;
    }
    t->ssd_stats.onloads++;
    tier_job_t land = *job;
    land.kind = JOB_LAND;
    land.host_slot = tier_dir_publish(&t->host, job->host_slot, &job->name);
    tier_dir_pin(&t->host, land.host_slot);
    if (!submit(t, &land)) {
        tier_dir_unpin(&t->host, land.host_slot);
        fail_block(t, job, KVRT_TIER_MISS_NO_SLOT);
    }
}

static void finish_ticket(kvrt_tier_t *t, ticket_t *k)
{
    uint32_t landed = 0;
    while (landed < k->accepted && k->fate[landed] == FATE_LANDED)
        landed++;
    kvrt_tier_miss_t miss = landed < k->accepted ? k->misses[landed]
                          : landed < k->count    ? k->miss
                                                 : KVRT_TIER_MISS_NONE;
    for (uint32_t i = 0; i < landed; i++)
        kvrt_cache_insert_named(t->cache, k->blocks[i], &k->names[i], NULL);
    if (k->sched) {
        /* An admitted request: the scheduler learns it here, the engine
         * sees the request run (or recompute) at its next step. */
        if (kvrt_arrival_complete(k->sched, k->arrival, landed) != KVRT_OK)
            kvrt_log(t->ctx, KVRT_LOG_WARN, "tier: arrival %llu: %s",
                     (unsigned long long)k->arrival, kvrt_ctx_last_error(t->ctx));
        t->admit_stats.landed_blocks += landed;
        t->admit_stats.failed += landed < k->count;
    } else {
        t->ready[t->ready_count++] = (kvrt_tier_completion_t){
            .ticket = k->id, .requested = k->count, .landed = landed, .miss = miss};
    }
    free(k->blocks);
    free(k->names);
    free(k->fate);
    free(k->misses);
    memset(k, 0, sizeof(*k));
}

static void apply(kvrt_tier_t *t, const tier_job_t *job)
{
    t->in_flight--;
    switch (job->kind) {
    case JOB_DEMOTE: {
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
        if (state == AHEAD_TORN || job->err) {
            tier_dir_release(&t->host, job->host_slot);
            t->host_stats.drops++;
            t->host_stats.errors += job->err != 0;
            break;
        }
        tier_dir_publish(&t->host, job->host_slot, &job->name);
        t->host_stats.offloads++;
        break;
    }
    case JOB_WRITE:
        finish_write(t, job);
        break;
    case JOB_READ:
        finish_read(t, job);
        break;
    case JOB_LAND: {
        tier_dir_unpin(&t->host, job->host_slot);
        if (job->err) { /* the device copy failed: recomputed */
            t->host_stats.errors++;
            fail_block(t, job, KVRT_TIER_MISS_IO);
            break;
        }
        t->host_stats.onloads++;
        ticket_t *k = &t->tickets[job->ticket_slot];
        k->fate[job->position] = FATE_LANDED;
        k->pending--;
        break;
    }
    }
    if (job->kind == JOB_READ || job->kind == JOB_LAND) {
        ticket_t *k = &t->tickets[job->ticket_slot];
        if (k->id && !k->pending && k->next == k->accepted)
            finish_ticket(t, k);
    }
}

/* The file is gone or replaced: nothing on it can be trusted to be ours. */
static void check_file(kvrt_tier_t *t)
{
    if (!t->has_ssd)
        return;
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
        kvrt_log(t->ctx, KVRT_LOG_WARN, "tier: %s created again", t->file.path);
    }
}

static uint32_t report(kvrt_tier_t *t, kvrt_tier_completion_t *out, uint32_t capacity)
{
    uint32_t n = t->ready_count < capacity ? t->ready_count : capacity;
    if (n && out)
        memcpy(out, t->ready, n * sizeof(*out));
    memmove(t->ready, t->ready + n, (t->ready_count - n) * sizeof(*t->ready));
    t->ready_count -= n;
    return n;
}

KVRT_EXPORT kvrt_status_t kvrt_tier_poll(kvrt_tier_t *tier, kvrt_tier_completion_t *out,
                                         uint32_t capacity, uint32_t *count_out)
{
    if (!tier || !count_out || (capacity && !out))
        return tier ? kvrt_fail(tier->ctx, KVRT_ERR_INVALID_ARG,
                                "count_out is required, and out when capacity > 0")
                    : KVRT_ERR_INVALID_ARG;
    uint32_t n;
    while ((n = kvrt_cq_poll(tier->worker.done, tier->done, tier->worker.ring_capacity)))
        for (uint32_t i = 0; i < n; i++)
            apply(tier, &tier->done[i]);
    check_file(tier);
    for (uint32_t i = 0; i < MAX_TICKETS; i++)
        if (tier->tickets[i].id && tier->tickets[i].next < tier->tickets[i].accepted)
            advance(tier, &tier->tickets[i]);
    make_room(tier);
    clean_ahead(tier);
    refresh_used(tier);
    *count_out = report(tier, out, capacity);
    return KVRT_OK;
}

KVRT_EXPORT int kvrt_tier_fd(const kvrt_tier_t *tier)
{
    return tier ? kvrt_cq_fd(tier->worker.done) : -1;
}

KVRT_EXPORT kvrt_status_t kvrt_tier_drain(kvrt_tier_t *tier, uint32_t timeout_ms,
                                          kvrt_tier_completion_t *out, uint32_t capacity,
                                          uint32_t *count_out)
{
    if (!tier || !count_out || (capacity && !out))
        return tier ? kvrt_fail(tier->ctx, KVRT_ERR_INVALID_ARG,
                                "count_out is required, and out when capacity > 0")
                    : KVRT_ERR_INVALID_ARG;
    uint64_t deadline = kvrt_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    *count_out = 0;
    for (;;) {
        uint32_t got;
        kvrt_tier_poll(tier, out ? out + *count_out : NULL, capacity - *count_out, &got);
        *count_out += got;
        if (!tier->in_flight)
            return KVRT_OK;
        uint64_t now = kvrt_now_ns();
        if (now >= deadline)
            return kvrt_fail(tier->ctx, KVRT_ERR_TIMEOUT, "tier: %u jobs still in flight",
                             tier->in_flight);
        uint64_t left_ms = (deadline - now) / 1000000ull + 1;
        kvrt_cq_wait(tier->worker.done, (uint32_t)(left_ms < 100 ? left_ms : 100));
    }
}

/* ---- match and onload --------------------------------------------------------- */

/* Write-through: a pool block hit wt_hits times is copied to host memory
 * while it is still in use, so a later eviction finds it below whatever
 * the queue is doing then. Like clean-ahead it never waits: no free host
 * slot or a full queue skips the block (its next hit tries again). */
static void write_through(kvrt_tier_t *t, const int32_t *blocks,
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
        if (!copy_ahead(t, b, &name))
            return;
        t->write_throughs++;
    }
}

KVRT_EXPORT kvrt_status_t kvrt_tier_match(kvrt_tier_t *tier, const int32_t *tokens,
                                          uint32_t num_tokens, const kvrt_hash_keys_t *keys,
                                          uint32_t max_blocks, int32_t *blocks_out,
                                          kvrt_block_hash_t *hashes_out,
                                          kvrt_tier_match_t *match_out)
{
    if (!tier)
        return KVRT_ERR_INVALID_ARG;
    if (!hashes_out || !match_out)
        return kvrt_fail(tier->ctx, KVRT_ERR_INVALID_ARG, "hashes_out and match_out are "
                                                          "required");
    kvrt_cache_match_t m;
    kvrt_status_t status = kvrt_cache_match(tier->cache, tokens, num_tokens, keys, max_blocks,
                                            blocks_out, hashes_out, &m);
    if (status != KVRT_OK)
        return status;
    kvrt_tier_match_t r = {.gpu_blocks = m.num_blocks};
    if (tier->wt_hits && m.num_blocks)
        write_through(tier, blocks_out, hashes_out, m.num_blocks, keys);
    kvrt_pool_info_t info;
    kvrt_pool_info(tier->pool, &info);
    uint32_t tpb = info.tokens_per_block, full = num_tokens / tpb;
    if (full > max_blocks)
        full = max_blocks;
    kvrt_block_hash_t parent = tier->root;
    if (m.num_blocks)
        parent = hashes_out[m.num_blocks - 1];
    for (uint32_t i = m.num_blocks; i < full; i++) {
        kvrt_block_hash_t content, key;
        if (kvrt_block_hash(&parent, tokens + (size_t)i * tpb, tpb, i * tpb, keys, &content) !=
                KVRT_OK ||
            kvrt_block_key(&content, keys, &key) != KVRT_OK)
            break;
        if (tier_dir_find(&tier->host, &key) >= 0)
            r.host_blocks++;
        else if (tier->has_ssd && tier_dir_find(&tier->ssd, &key) >= 0)
            r.ssd_blocks++;
        else
            break;
        hashes_out[i] = content;
        parent = content;
    }
    tier->host_stats.hits += r.host_blocks;
    tier->ssd_stats.hits += r.ssd_blocks;
    *match_out = r;
    return KVRT_OK;
}

static kvrt_status_t ticket_open(kvrt_tier_t *t, uint32_t count, ticket_t **out)
{
    /* Open and reported-but-unread tickets share MAX_TICKETS, so the
     * ready list never overflows. */
    ticket_t *k = NULL;
    uint32_t open = 0;
    for (uint32_t i = 0; i < MAX_TICKETS; i++) {
        open += t->tickets[i].id != 0;
        if (!t->tickets[i].id && !k)
            k = &t->tickets[i];
    }
    if (!k || open + t->ready_count >= MAX_TICKETS)
        return kvrt_fail(t->ctx, KVRT_ERR_REQUEST_LIMIT, "tier: %u onloads in flight",
                         MAX_TICKETS);
    uint32_t n = count ? count : 1;
    k->blocks = calloc(n, sizeof(*k->blocks));
    k->names = calloc(n, sizeof(*k->names));
    k->fate = calloc(n, sizeof(*k->fate));
    k->misses = calloc(n, sizeof(*k->misses));
    if (!k->blocks || !k->names || !k->fate || !k->misses) {
        free(k->blocks);
        free(k->names);
        free(k->fate);
        free(k->misses);
        memset(k, 0, sizeof(*k));
        return kvrt_fail(t->ctx, KVRT_ERR_NO_MEMORY, "tier: onload of %u blocks", count);
    }
    k->id = ++t->next_ticket;
    k->count = count;
    *out = k;
    return KVRT_OK;
}

/* A host slot for an SSD read, now: a free one, else the least recently
 * used host block gives way (a hit being served beats a block that may be
 * hit later; counted as an eviction, and as an SSD drop when it was not on
 * SSD). -1 when every slot is pinned or being filled. */
static int32_t host_slot_for_read(kvrt_tier_t *t)
{
    int32_t slot = tier_dir_take(&t->host);
    if (slot >= 0)
        return slot;
    int32_t victim = tier_dir_lru(&t->host);
    if (victim < 0)
        return -1;
    if (t->has_ssd && tier_dir_find(&t->ssd, &t->host.names[victim].key) < 0)
        t->ssd_stats.drops++;
    tier_dir_release(&t->host, victim);
    t->host_stats.evictions++;
    return tier_dir_take(&t->host);
}

/* Not started for now (queue full, no host slot): poll tries again. */
#define MISS_RETRY ((kvrt_tier_miss_t)-1)

/* Starts block i of ticket k; the miss reason when it cannot. */
static kvrt_tier_miss_t start_block(kvrt_tier_t *t, ticket_t *k, uint32_t i)
{
    tier_job_t job = {.block = k->blocks[i], .ticket_slot = (uint32_t)(k - t->tickets),
                      .position = i, .name = k->names[i]};
    int32_t h = tier_dir_find(&t->host, &k->names[i].key);
    if (h >= 0) {
        job.kind = JOB_LAND;
        job.host_slot = h;
        if (!submit(t, &job))
            return MISS_RETRY;
        tier_dir_pin(&t->host, h);
        tier_dir_touch(&t->host, h);
        return KVRT_TIER_MISS_NONE;
    }
    int32_t s = t->has_ssd && !t->file_lost ? tier_dir_find(&t->ssd, &k->names[i].key) : -1;
    if (s < 0)
        return KVRT_TIER_MISS_GONE;
    job.kind = JOB_READ;
    job.ssd_slot = s;
    job.host_slot = host_slot_for_read(t);
    if (job.host_slot < 0)
        return MISS_RETRY;
    if (!submit(t, &job)) {
        tier_dir_release(&t->host, job.host_slot);
        return MISS_RETRY;
    }
    tier_dir_pin(&t->ssd, s);
    return KVRT_TIER_MISS_NONE;
}

/* Starts the ticket's next blocks while the queue and host slots allow;
 * a block gone meanwhile ends the run there. Finishes the ticket when
 * nothing is left to start or wait for. */
static void advance(kvrt_tier_t *t, ticket_t *k)
{
    while (k->next < k->accepted) {
        kvrt_tier_miss_t miss = start_block(t, k, k->next);
        if (miss == MISS_RETRY)
            break;
        if (miss != KVRT_TIER_MISS_NONE) {
            k->accepted = k->next;
            k->miss = miss;
            break;
        }
        k->next++;
        k->pending++;
    }
    if (k->next == k->accepted && !k->pending)
        finish_ticket(t, k);
}

KVRT_EXPORT kvrt_status_t kvrt_tier_onload(kvrt_tier_t *tier, uint32_t first_index,
                                           uint32_t count, const kvrt_block_hash_t *contents,
                                           const kvrt_block_hash_t *parent,
                                           const kvrt_hash_keys_t *keys, const int32_t *blocks,
                                           uint64_t *ticket_out, uint32_t *accepted_out)
{
    return tier_onload_start(tier, first_index, count, contents, parent, keys, blocks, NULL, 0,
                             ticket_out, accepted_out);
}

kvrt_status_t tier_onload_start(kvrt_tier_t *tier, uint32_t first_index, uint32_t count,
                                const kvrt_block_hash_t *contents,
                                const kvrt_block_hash_t *parent, const kvrt_hash_keys_t *keys,
                                const int32_t *blocks, kvrt_sched_t *sched,
                                kvrt_arrival_id_t arrival, uint64_t *ticket_out,
                                uint32_t *accepted_out)
{
    if (!tier)
        return KVRT_ERR_INVALID_ARG;
    if (!ticket_out || (count && (!contents || !blocks)) || count > MAX_ONLOAD_BLOCKS ||
        (first_index && !parent))
        return kvrt_fail(tier->ctx, KVRT_ERR_INVALID_ARG,
                         "onload needs ticket_out, contents and blocks for %u blocks (at most "
                         "%u), and parent when first_index > 0", count, MAX_ONLOAD_BLOCKS);
    kvrt_block_hash_t prev_key = {0, 0};
    if (kvrt_block_key(first_index ? parent : &prev_key, keys, &prev_key) != KVRT_OK)
        return kvrt_fail(tier->ctx, KVRT_ERR_INVALID_ARG, "keys are not valid");
    for (uint32_t i = 0; i < count; i++) {
        uint32_t refs;
        if (kvrt_pool_refcount(tier->pool, blocks[i], &refs) != KVRT_OK || !refs ||
            kvrt_pool_is_cached(tier->pool, blocks[i]))
            return kvrt_fail(tier->ctx, KVRT_ERR_INVALID_ARG,
                             "block %d is not a used, uncached block of the pool", blocks[i]);
    }
    ticket_t *k = NULL;
    kvrt_status_t status = ticket_open(tier, count, &k);
    if (status != KVRT_OK)
        return status;
    for (uint32_t i = 0; i < count; i++) {
        kvrt_cache_block_name_t *n = &k->names[i];
        n->content = contents[i];
        kvrt_block_key(&contents[i], keys, &n->key); /* keys checked above */
        n->depth = first_index + i;
        if (n->depth) {
            n->parent_key = i ? k->names[i - 1].key : prev_key;
            n->flags = KVRT_CACHE_NAME_HAS_PARENT;
        }
        k->blocks[i] = blocks[i];
    }
    /* The run the tiers hold now; blocks beyond it are not attempted. */
    uint32_t i = 0;
    while (i < count && (tier_dir_find(&tier->host, &k->names[i].key) >= 0 ||
                         (tier->has_ssd && !tier->file_lost &&
                          tier_dir_find(&tier->ssd, &k->names[i].key) >= 0)))
        i++;
    k->accepted = i;
    k->miss = i < count ? KVRT_TIER_MISS_GONE : KVRT_TIER_MISS_NONE;
    k->sched = sched;
    k->arrival = arrival;
    *ticket_out = k->id;
    if (accepted_out)
        *accepted_out = i;
    advance(tier, k);
    return KVRT_OK;
}

/* ---- create / destroy / stats ------------------------------------------------ */

static uint64_t layout_hash(const kvrt_kv_layout_t *l, uint64_t block_bytes)
{
    uint64_t words[8] = {l->num_layers, l->num_kv_heads, l->head_dim, l->tokens_per_block,
                         (uint64_t)l->dtype, (uint64_t)l->format, (uint64_t)l->order,
                         block_bytes};
    return XXH3_64bits(words, sizeof(words));
}

static kvrt_status_t check_params(kvrt_ctx_t *ctx, const kvrt_tier_params_t *p)
{
    const uint64_t known = KVRT_TIER_PARAM_HOST_BLOCKS | KVRT_TIER_PARAM_SSD |
                           KVRT_TIER_PARAM_QUEUE_DEPTH | KVRT_TIER_PARAM_FLAGS |
                           KVRT_TIER_PARAM_DEVICE | KVRT_TIER_PARAM_WRITE_THROUGH;
    if (!p || (p->field_mask & ~known) || !(p->field_mask & KVRT_TIER_PARAM_HOST_BLOCKS))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "params with host_blocks and only known field_mask bits are required");
    if (p->host_blocks < 1 || p->host_blocks > (1u << 24))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "host_blocks %u is not in 1..2^24",
                         p->host_blocks);
    if ((p->field_mask & KVRT_TIER_PARAM_QUEUE_DEPTH) &&
        (p->queue_depth < 1 || p->queue_depth > TIER_MAX_QUEUE_DEPTH))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "queue_depth %u is not in 1..%u",
                         p->queue_depth, TIER_MAX_QUEUE_DEPTH);
    if ((p->field_mask & KVRT_TIER_PARAM_FLAGS) &&
        (p->flags & ~(uint32_t)(KVRT_TIER_SSD_BUFFERED | KVRT_TIER_HOST_POOL)))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown flags 0x%x", p->flags);
    if ((p->field_mask & KVRT_TIER_PARAM_WRITE_THROUGH) && p->write_through_hits > UINT16_MAX)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "write_through_hits %u is above %u",
                         p->write_through_hits, UINT16_MAX);
    if ((p->field_mask & KVRT_TIER_PARAM_DEVICE) &&
        (!p->device || !p->device->sync || !p->device->pin || !p->device->unpin))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "a device needs sync, pin and unpin");
    if (p->field_mask & KVRT_TIER_PARAM_SSD) {
        struct stat st;
        if (!p->ssd_dir || stat(p->ssd_dir, &st) != 0 || !S_ISDIR(st.st_mode))
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "ssd_dir '%s' is not a directory",
                             p->ssd_dir ? p->ssd_dir : "(null)");
        if (strlen(p->ssd_dir) > 3000)
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "ssd_dir is too long");
        if (p->ssd_blocks < 1 || p->ssd_blocks > (1u << 26))
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "ssd_blocks %u is not in 1..2^26",
                             p->ssd_blocks);
    }
    return KVRT_OK;
}

static void tier_free(kvrt_tier_t *t)
{
    tier_worker_stop(&t->worker);
    for (uint32_t i = 0; i < MAX_TICKETS; i++)
        if (t->tickets[i].id) {
            /* Nothing writes its blocks any more: the scheduler may have
             * them back (the request recomputes). */
            if (t->tickets[i].sched)
                kvrt_arrival_complete(t->tickets[i].sched, t->tickets[i].arrival, 0);
            free(t->tickets[i].blocks);
            free(t->tickets[i].names);
            free(t->tickets[i].fate);
            free(t->tickets[i].misses);
        }
    if (t->slab_pinned)
        t->worker.device.unpin(t->worker.device.user, t->slab);
    if (t->slab_raw)
        kvrt_host_free(t->ctx, t->slab_raw);
    tier_dir_destroy(&t->host);
    tier_dir_destroy(&t->ssd);
    if (t->has_ssd)
        tier_ssd_close(&t->file);
    free(t->done);
    free(t->ready);
    free(t->ahead);
    free(t->peek_blocks);
    free(t->peek_names);
    free(t->hit_count);
    free(t->hit_key);
    free(t);
}

static kvrt_status_t setup(kvrt_tier_t *t, const kvrt_tier_params_t *p,
                           const kvrt_pool_info_t *info, const kvrt_kv_layout_t *layout)
{
    uint64_t stride = (info->block_bytes + TIER_ALIGN - 1) / TIER_ALIGN * TIER_ALIGN;
    if (tier_dir_init(&t->host, p->host_blocks) != KVRT_OK)
        return kvrt_fail(t->ctx, KVRT_ERR_NO_MEMORY, "tier: host directory");
    /* Hugepage aligned whatever the allocator returns for this size: O_DIRECT
     * needs page alignment, and one 2 MiB-aligned region registers once. */
    t->slab_raw = kvrt_host_alloc(t->ctx, (size_t)(stride * p->host_blocks + HUGEPAGE));
    if (t->slab_raw)
        t->slab = (uint8_t *)(((uintptr_t)t->slab_raw + HUGEPAGE - 1) & ~(uintptr_t)(HUGEPAGE - 1));
    t->done = calloc(4 * t->queue_depth, sizeof(*t->done));
    t->ready = calloc(MAX_TICKETS, sizeof(*t->ready));
    t->ahead = calloc(info->num_blocks, sizeof(*t->ahead));
    t->peek_blocks = calloc(AHEAD_WINDOW * t->queue_depth, sizeof(*t->peek_blocks));
    t->peek_names = calloc(AHEAD_WINDOW * t->queue_depth, sizeof(*t->peek_names));
    if ((p->field_mask & KVRT_TIER_PARAM_WRITE_THROUGH) && p->write_through_hits) {
        t->wt_hits = p->write_through_hits;
        t->hit_count = calloc(info->num_blocks, sizeof(*t->hit_count));
        t->hit_key = calloc(info->num_blocks, sizeof(*t->hit_key));
        if (!t->hit_count || !t->hit_key)
            return kvrt_fail(t->ctx, KVRT_ERR_NO_MEMORY, "tier: write-through counters");
    }
    if (!t->slab || !t->done || !t->ready || !t->ahead || !t->peek_blocks || !t->peek_names)
        return kvrt_fail(t->ctx, KVRT_ERR_NO_MEMORY, "tier: %u host slots of %llu bytes",
                         p->host_blocks, (unsigned long long)stride);
    tier_worker_t *w = &t->worker;
    if (p->field_mask & KVRT_TIER_PARAM_DEVICE) {
        w->device = *p->device;
        w->has_device = true;
        if (w->device.pin(w->device.user, t->slab, stride * p->host_blocks) != 0)
            return kvrt_fail(t->ctx, KVRT_ERR_DEVICE,
                             "tier: the engine could not pin %u host slots", p->host_blocks);
        t->slab_pinned = true;
    }
    t->host_stats.capacity_blocks = p->host_blocks;
    if (t->has_ssd) {
        if (tier_dir_init(&t->ssd, p->ssd_blocks) != KVRT_OK)
            return kvrt_fail(t->ctx, KVRT_ERR_NO_MEMORY, "tier: SSD directory");
        kvrt_status_t status = tier_ssd_open(
            t->ctx, &t->file, p->ssd_dir, &t->root, layout_hash(layout, info->block_bytes),
            info->block_bytes, (p->field_mask & KVRT_TIER_PARAM_FLAGS) &&
                                   (p->flags & KVRT_TIER_SSD_BUFFERED));
        if (status != KVRT_OK)
            return status;
        tier_ssd_rebuild(t->ctx, &t->file, &t->ssd);
        tier_ssd_reserve(t->ctx, &t->file, p->ssd_blocks);
        t->ssd_stats.capacity_blocks = p->ssd_blocks;
    }
    w->queue_depth = t->queue_depth;
    w->pool_view = (kvrt_kv_cache_t){.layout = *layout, .num_blocks = info->num_blocks,
                                     .base = info->base};
    w->host_base = t->slab;
    w->host_stride = stride;
    w->ssd = t->has_ssd ? &t->file : NULL;
    return tier_worker_start(t->ctx, w, p->host_blocks);
}

static void tier_destroy_owned(kvrt_owned_t *owned)
{
    kvrt_tier_destroy((kvrt_tier_t *)owned); /* owned is the first member */
}

KVRT_EXPORT kvrt_status_t kvrt_tier_create(kvrt_cache_t *cache, const kvrt_tier_params_t *params,
                                           kvrt_tier_t **tier_out)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARG;
    kvrt_pool_t *pool = kvrt_cache_pool(cache);
    kvrt_ctx_t *ctx = kvrt_pool_ctx(pool);
    if (!tier_out)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "tier_out is required");
    kvrt_status_t status = check_params(ctx, params);
    if (status != KVRT_OK)
        return status;
    kvrt_pool_info_t info;
    kvrt_kv_layout_t layout;
    kvrt_pool_info(pool, &info);
    kvrt_pool_layout(pool, &layout);
    bool host_pool = info.host_memory || ((params->field_mask & KVRT_TIER_PARAM_FLAGS) &&
                                          (params->flags & KVRT_TIER_HOST_POOL));
    bool device = params->field_mask & KVRT_TIER_PARAM_DEVICE;
    if (device && host_pool)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "tier: a device was given for a pool in host memory");
    if (!host_pool && !device)
        return kvrt_fail(ctx, KVRT_ERR_UNSUPPORTED,
                         "tier: the pool's memory is the engine's; say it is host memory "
                         "(KVRT_TIER_HOST_POOL) or give its device (KVRT_TIER_PARAM_DEVICE)");
    kvrt_tier_t *t = calloc(1, sizeof(*t));
    if (!t)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "tier");
    t->ctx = ctx;
    t->cache = cache;
    t->pool = pool;
    t->group_id = info.group_id;
    t->queue_depth = (params->field_mask & KVRT_TIER_PARAM_QUEUE_DEPTH) ? params->queue_depth
                                                                        : 32;
    t->has_ssd = params->field_mask & KVRT_TIER_PARAM_SSD;
    if (t->has_ssd)
        snprintf(t->ssd_dir, sizeof(t->ssd_dir), "%s", params->ssd_dir);
    kvrt_cache_root(cache, &t->root);
    status = setup(t, params, &info, &layout);
    if (status == KVRT_OK)
        status = kvrt_cache_set_sink(cache, sink, t);
    if (status != KVRT_OK) {
        tier_free(t);
        return status;
    }
    char prefix[48];
    snprintf(prefix, sizeof(prefix), "tier.%u.host", t->group_id);
    status = kvrt_ctl_register(ctx, prefix, level_nodes,
                               sizeof(level_nodes) / sizeof(level_nodes[0]), &t->host_stats);
    snprintf(prefix, sizeof(prefix), "tier.%u.ssd", t->group_id);
    if (status == KVRT_OK)
        status = kvrt_ctl_register(ctx, prefix, level_nodes,
                                   sizeof(level_nodes) / sizeof(level_nodes[0]), &t->ssd_stats);
    if (status != KVRT_OK) {
        kvrt_ctl_unregister(ctx, &t->host_stats);
        kvrt_cache_set_sink(cache, NULL, NULL);
        tier_free(t);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "ctl registration");
    }
    refresh_used(t);
    /* The cache may not be destroyed under the tier, and a context torn
     * down with the tier still alive takes it down before the cache. */
    kvrt_cache_hold(cache);
    /* Before the schedulers too: destroying the tier completes the
     * arrivals of the requests it admitted. */
    t->owned.rank = KVRT_TEARDOWN_FIRST;
    kvrt_ctx_own(ctx, &t->owned, tier_destroy_owned);
    kvrt_log(ctx, KVRT_LOG_INFO, "tier on pool %u: %u host slots, %s%s", t->group_id,
             params->host_blocks, t->has_ssd ? t->file.path : "no SSD tier",
             t->has_ssd && t->file.buffered ? " (buffered I/O)" : "");
    *tier_out = t;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_tier_destroy(kvrt_tier_t *tier)
{
    if (!tier)
        return KVRT_OK;
    kvrt_cache_set_sink(tier->cache, NULL, NULL);
    /* Jobs finish on their own (local copies and I/O); bounded by the
     * device, not by peers. */
    uint32_t ignored;
    while (tier->in_flight)
        if (kvrt_tier_drain(tier, 60000, NULL, 0, &ignored) == KVRT_ERR_TIMEOUT)
            kvrt_log(tier->ctx, KVRT_LOG_WARN, "tier: still waiting for %u jobs",
                     tier->in_flight);
    kvrt_ctl_unregister(tier->ctx, &tier->host_stats);
    kvrt_ctl_unregister(tier->ctx, &tier->ssd_stats);
    kvrt_ctx_disown(tier->ctx, &tier->owned);
    kvrt_cache_unhold(tier->cache);
    tier_free(tier);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_tier_stats(const kvrt_tier_t *tier, kvrt_tier_stats_t *out)
{
    if (!tier || !out)
        return tier ? kvrt_fail(tier->ctx, KVRT_ERR_INVALID_ARG, "stats_out is required")
                    : KVRT_ERR_INVALID_ARG;
    *out = (kvrt_tier_stats_t){.host = tier->host_stats, .ssd = tier->ssd_stats,
                               .ssd_buffered = tier->has_ssd && tier->file.buffered,
                               .in_flight = tier->in_flight,
                               .admitted = tier->admit_stats.admitted,
                               .admitted_landed_blocks = tier->admit_stats.landed_blocks,
                               .admitted_failed = tier->admit_stats.failed,
                               .write_throughs = tier->write_throughs};
    out->host.used_blocks = tier->host.used;
    out->ssd.used_blocks = tier->has_ssd ? tier->ssd.used : 0;
    return KVRT_OK;
}

kvrt_pool_t *tier_pool(const kvrt_tier_t *tier)
{
    return tier->pool;
}

slot_dir_t *tier_level_dir(kvrt_tier_t *tier, kvrt_tier_level_t level)
{
    return level == KVRT_TIER_LEVEL_HOST ? &tier->host : &tier->ssd;
}

tier_admit_stats_t *tier_admit_stats(kvrt_tier_t *tier)
{
    return &tier->admit_stats;
}

void kvrt_tier_set_fault_hook(kvrt_tier_t *tier, tier_fault_fn fn, void *user_data)
{
    tier->worker.fault = fn;
    tier->worker.fault_user = user_data;
}
