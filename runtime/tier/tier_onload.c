/*
 * tier_onload.c - bringing blocks back: kvrt_tier_match follows a prompt
 * past the pool through the host and SSD directories, kvrt_tier_onload
 * opens a ticket whose blocks are started as the queue drains (a host
 * block is copied into the caller's pool block; an SSD block is read into
 * a host slot, verified, then copied), and the completions that end a
 * ticket: when every block is done, the leading landed run is inserted into
 * the cache and the ticket reported (or, for kvrt_tier_admit, its arrival
 * completed). A block that fails ends the landed run; the rest is
 * recomputed. Engine thread only.
 */
#include <stdlib.h>
#include <string.h>

#include "kv/pool_internal.h"
#include "tier/tier_internal.h"

static void fail_block(kvrt_tier_t *t, const tier_job_t *job, kvrt_tier_miss_t miss)
{
    ticket_t *k = &t->tickets[job->ticket_slot];
    k->fate[job->position] = FATE_FAILED;
    k->misses[job->position] = miss;
    k->pending--;
}

static void finish_ticket(kvrt_tier_t *t, ticket_t *k)
{
    uint32_t landed = 0;
    while (landed < k->accepted && k->fate[landed] == FATE_LANDED)
        landed++;
    kvrt_tier_miss_t miss = landed < k->accepted ? k->misses[landed]
                          : landed < k->count    ? k->miss
                                                 : KVRT_TIER_MISS_NONE;
    if (tier_stale(t, k->epoch)) {
        /* Blocks that landed before the reset hold K/V of before it: none
         * is cached or counted as landed; the caller recomputes them. */
        landed = 0;
        miss = KVRT_TIER_MISS_RESET;
    }
    if (t->destroying && !k->sched)
        landed = 0; /* abandoned (kvrt_tier_destroy): the caller reuses the blocks */
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
    t->open_tickets--;
}

/* A ticket whose last block just completed ends here. */
static void ticket_check(kvrt_tier_t *t, const tier_job_t *job)
{
    ticket_t *k = &t->tickets[job->ticket_slot];
    if (k->id && !k->pending && k->next == k->accepted)
        finish_ticket(t, k);
}

static void read_done(kvrt_tier_t *t, const tier_job_t *job)
{
    tier_dir_unpin(&t->ssd, job->ssd_slot); /* a slot forgotten by a reset goes */
    if (tier_stale(t, job->epoch)) {
        tier_dir_release(&t->host, job->host_slot);
        fail_block(t, job, KVRT_TIER_MISS_RESET);
        return;
    }
    if (job->err || job->miss != KVRT_TIER_MISS_NONE) {
        if (!t->ssd.pins[job->ssd_slot]) {
            /* Zeroed, so that the next process does not index it again
             * only to fail the same check. */
            if (job->miss == KVRT_TIER_MISS_CHECKSUM)
                tier_ssd_discard(t->ctx, &t->file, (uint32_t)job->ssd_slot, 1);
            tier_dir_release(&t->ssd, job->ssd_slot);
        }
        tier_log_ssd_failure(t, job, "read");
        tier_dir_release(&t->host, job->host_slot);
        fail_block(t, job, job->miss != KVRT_TIER_MISS_NONE ? job->miss : KVRT_TIER_MISS_IO);
        return;
    }
    t->ssd_stats.onloads++;
    tier_job_t land = *job;
    land.kind = JOB_LAND;
    land.host_slot = tier_dir_publish(&t->host, job->host_slot, &job->name);
    tier_dir_pin(&t->host, land.host_slot);
    if (!tier_submit(t, &land)) {
        tier_dir_unpin(&t->host, land.host_slot);
        fail_block(t, job, KVRT_TIER_MISS_NO_SLOT);
    }
}

void tier_finish_read(kvrt_tier_t *t, const tier_job_t *job)
{
    read_done(t, job);
    ticket_check(t, job);
}

/* A host -> pool copy of an onload ended. */
void tier_finish_land(kvrt_tier_t *t, const tier_job_t *job)
{
    tier_dir_unpin(&t->host, job->host_slot);
    if (tier_stale(t, job->epoch)) {
        fail_block(t, job, KVRT_TIER_MISS_RESET);
    } else if (job->err) { /* the device copy failed: recomputed */
        t->host_stats.errors++;
        fail_block(t, job, KVRT_TIER_MISS_IO);
    } else {
        t->host_stats.onloads++;
        ticket_t *k = &t->tickets[job->ticket_slot];
        k->fate[job->position] = FATE_LANDED;
        k->pending--;
    }
    ticket_check(t, job);
}

uint32_t tier_follow_below(const slot_dir_t *host, const slot_dir_t *ssd,
                           const kvrt_block_hash_t *parent, const int32_t *tokens,
                           uint32_t tokens_per_block, uint32_t from, uint32_t to,
                           const kvrt_hash_keys_t *keys, kvrt_block_hash_t *hashes,
                           uint8_t *in_ssd, uint32_t *ssd_count_out)
{
    uint32_t tpb = tokens_per_block, n = 0;
    kvrt_block_hash_t prev = *parent;
    *ssd_count_out = 0;
    for (uint32_t i = from; i < to; i++, n++) {
        kvrt_block_hash_t content, key;
        if (kvrt_block_hash(&prev, tokens + (size_t)i * tpb, tpb, i * tpb, keys, &content) !=
                KVRT_OK ||
            kvrt_block_key(&content, keys, &key) != KVRT_OK)
            break;
        bool on_ssd = false;
        if (tier_dir_find(host, &key) < 0) {
            if (!ssd || tier_dir_find(ssd, &key) < 0)
                break;
            on_ssd = true;
        }
        *ssd_count_out += on_ssd;
        if (in_ssd)
            in_ssd[i] = on_ssd;
        hashes[i] = content;
        prev = content;
    }
    return n;
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
    tier_sync_reset(tier);
    kvrt_cache_match_t m;
    kvrt_status_t status = kvrt_cache_match(tier->cache, tokens, num_tokens, keys, max_blocks,
                                            blocks_out, hashes_out, &m);
    if (status != KVRT_OK)
        return status;
    kvrt_tier_match_t r = {.gpu_blocks = m.num_blocks};
    if (tier->wt_hits && m.num_blocks)
        tier_write_through(tier, blocks_out, hashes_out, m.num_blocks, keys);
    kvrt_pool_info_t info;
    kvrt_pool_info(tier->pool, &info);
    uint32_t tpb = info.tokens_per_block, full = num_tokens / tpb;
    if (full > max_blocks)
        full = max_blocks;
    uint32_t below = tier_follow_below(&tier->host, tier->has_ssd ? &tier->ssd : NULL,
                                       m.num_blocks ? &hashes_out[m.num_blocks - 1] : &tier->root,
                                       tokens, tpb, m.num_blocks, full, keys, hashes_out, NULL,
                                       &r.ssd_blocks);
    r.host_blocks = below - r.ssd_blocks;
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
    k->epoch = t->resets;
    t->open_tickets++;
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
        if (!tier_submit(t, &job))
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
    if (!tier_submit(t, &job)) {
        tier_dir_release(&t->host, job.host_slot);
        return MISS_RETRY;
    }
    tier_dir_pin(&t->ssd, s);
    return KVRT_TIER_MISS_NONE;
}

/* Starts the ticket's next blocks while the queue and host slots allow;
 * a block gone meanwhile ends the run there. Finishes the ticket when
 * nothing is left to start or wait for. */
void tier_advance(kvrt_tier_t *t, ticket_t *k)
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

static int compare_block_ids(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Two destinations that are one block would publish one block's bytes
 * under two names. */
static kvrt_status_t distinct_blocks(kvrt_ctx_t *ctx, const int32_t *blocks, uint32_t count)
{
    if (count < 2)
        return KVRT_OK;
    int32_t *sorted = malloc((size_t)count * sizeof(*sorted));
    if (!sorted)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "onload: %u block ids", count);
    memcpy(sorted, blocks, (size_t)count * sizeof(*sorted));
    qsort(sorted, count, sizeof(*sorted), compare_block_ids);
    kvrt_status_t status = KVRT_OK;
    for (uint32_t i = 1; i < count && status == KVRT_OK; i++)
        if (sorted[i] == sorted[i - 1])
            status = kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                               "onload: block %d is given twice", sorted[i]);
    free(sorted);
    return status;
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
    kvrt_status_t status;
    if (!ticket_out || (count && (!contents || !blocks)) || count > MAX_ONLOAD_BLOCKS ||
        (first_index && !parent))
        return kvrt_fail(tier->ctx, KVRT_ERR_INVALID_ARG,
                         "onload needs ticket_out, contents and blocks for %u blocks (at most "
                         "%u), and parent when first_index > 0", count, MAX_ONLOAD_BLOCKS);
    if (first_index > UINT32_MAX - count)
        return kvrt_fail(tier->ctx, KVRT_ERR_INVALID_ARG,
                         "first_index %u + count %u passes the last block index (2^32 - 1)",
                         first_index, count);
    status = distinct_blocks(tier->ctx, blocks, count);
    if (status != KVRT_OK)
        return status;
    tier_sync_reset(tier);
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
    status = ticket_open(tier, count, &k);
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
    tier_advance(tier, k);
    return KVRT_OK;
}
