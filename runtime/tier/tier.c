/*
 * tier.c - the tier stack under a prefix cache (include/kvrt/tier.h): its
 * lifecycle (create, destroy, stats, ctl nodes) and kvrt_tier_poll, which
 * applies the worker's completions and keeps the offload and onload paths
 * moving (tier_offload.c, tier_onload.c).
 *
 * Block life, all on the engine thread except the copies and I/O: offload
 * (the cache's eviction sink, pool -> host), write-back (host -> SSD) and
 * onload (SSD -> host -> pool) are described in those files.
 * Faults: an I/O error, a full disk, a short read (file truncated), a
 * header or checksum that does not verify: the SSD slot is dropped, the
 * failure counted and logged, the onload's block reported with its reason.
 * A file deleted or replaced under kvrt: every SSD block is dropped and the
 * file is created again once nothing is in flight.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "kv/pool_internal.h"
#include "tier/tier_internal.h"

#define HUGEPAGE (2u << 20)

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

void tier_refresh_used(kvrt_tier_t *t)
{
    t->host_stats.used_blocks = t->host.used;
    t->ssd_stats.used_blocks = t->has_ssd ? t->ssd.used : 0;
}

/* ---- jobs and their completions -------------------------------------------- */

bool tier_submit(kvrt_tier_t *t, const tier_job_t *job)
{
    tier_job_t stamped = *job;
    stamped.epoch = t->resets;
    if (!tier_worker_submit(&t->worker, &stamped))
        return false;
    t->in_flight++;
    return true;
}

static void apply(kvrt_tier_t *t, const tier_job_t *job)
{
    t->in_flight--;
    switch (job->kind) {
    case JOB_DEMOTE:
        tier_finish_demote(t, job);
        break;
    case JOB_WRITE:
        tier_finish_write(t, job);
        break;
    case JOB_READ:
        tier_finish_read(t, job);
        break;
    case JOB_LAND:
        tier_finish_land(t, job);
        break;
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
    /* Called once per engine step: what it costs with nothing moving is
     * a few compares. No lock unless something is in flight, no ticket
     * scan unless one is open, the file checked at most every 10 ms. */
    tier_sync_reset(tier);
    uint32_t n;
    if (tier->in_flight)
        while ((n = kvrt_cq_poll(tier->worker.done, tier->done, tier->worker.ring_capacity)))
            for (uint32_t i = 0; i < n; i++)
                apply(tier, &tier->done[i]);
    tier_check_file(tier);
    for (uint32_t i = 0; tier->open_tickets && i < MAX_TICKETS; i++)
        if (tier->tickets[i].id && tier->tickets[i].next < tier->tickets[i].accepted)
            tier_advance(tier, &tier->tickets[i]);
    tier_make_room(tier);
    tier_clean_ahead(tier);
    tier_refresh_used(tier);
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
    uint64_t stride = tier_slot_bytes(info->block_bytes);
    if (tier_dir_init(&t->host, p->host_blocks) != KVRT_OK)
        return kvrt_fail(t->ctx, KVRT_ERR_NO_MEMORY, "tier: host directory");
    /* Hugepage aligned whatever the allocator returns for this size: O_DIRECT
     * needs page alignment, and one 2 MiB-aligned region registers once. */
    t->slab_raw = kvrt_host_alloc(t->ctx, (size_t)(stride * p->host_blocks + HUGEPAGE));
    if (t->slab_raw)
        t->slab = (uint8_t *)(((uintptr_t)t->slab_raw + HUGEPAGE - 1) & ~(uintptr_t)(HUGEPAGE - 1));
#ifdef MADV_POPULATE_WRITE
    /* Fault the slots in now, not on the tier's first pass over them: an
     * offload into a fresh page would pay the kernel's zeroing and fault
     * (a third of its time). Best effort: old kernels refuse it. */
    if (t->slab)
        (void)madvise(t->slab, stride * p->host_blocks, MADV_POPULATE_WRITE);
#endif
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
    t->tokens_per_block = info.tokens_per_block;
    t->queue_depth = (params->field_mask & KVRT_TIER_PARAM_QUEUE_DEPTH) ? params->queue_depth
                                                                        : 32;
    t->has_ssd = params->field_mask & KVRT_TIER_PARAM_SSD;
    if (t->has_ssd)
        snprintf(t->ssd_dir, sizeof(t->ssd_dir), "%s", params->ssd_dir);
    kvrt_cache_root(cache, &t->root);
    status = setup(t, params, &info, &layout);
    if (status == KVRT_OK)
        status = kvrt_cache_set_sink(cache, tier_sink, t);
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
    tier_refresh_used(t);
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
     * device, not by peers. Onload tickets they end are abandoned: their
     * blocks are the caller's again, to reuse, so nothing they hold may
     * be indexed under the names they were to get. */
    tier->destroying = true;
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

kvrt_cache_t *tier_cache(const kvrt_tier_t *tier)
{
    return tier->cache;
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
