/*
 * sim_tier.c - kvrt-sim's tiers below the GPU (sim_tier.h): the cache's
 * eviction sink fills the host tier's slot directory, host overflow is
 * written back to the SSD tier's, and an arriving prompt that continues
 * below the GPU waits for its KV (kvrt_seq_await_kv) while a modeled
 * transfer brings it back.
 */
#include "sim_tier.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cache/hooks.h"
#include "tier/tier_internal.h"

#define MAX_SLOTS (1u << 26) /* the slot directory's range, as kvrt's SSD tier */

typedef struct onload {
    double start_us, done_us;
    kvrt_arrival_id_t arrival;
    uint32_t blocks;
} onload_t;

struct sim_tier {
    sim_tier_config_t cfg;
    kvrt_cache_t *cache;
    kvrt_sched_t *sched;
    kvrt_pool_t *pool;
    uint32_t tokens_per_block;
    uint64_t block_bytes;
    double prefill_us_per_token;
    slot_dir_t host, ssd;
    bool has_ssd;
    double host_link_free_us, ssd_link_free_us; /* FIFO links: free from then on */
    onload_t *queue;    /* in flight, by done_us (the host link is FIFO) */
    size_t head, count, capacity;
    int32_t *hits;      /* admission scratch: pool hits, hashes, tier of each block */
    kvrt_block_hash_t *hashes;
    uint8_t *from_ssd;
    uint32_t scratch_blocks;
    double onload_ms_sum;
    sim_tier_results_t res;
};

sim_tier_config_t sim_tier_config_default(void)
{
    return (sim_tier_config_t){
        .host_gb = 0.0,
        .ssd_gb = 0.0,
        .host_gbps = 25.0,      /* PCIe 5.0 x16: 64 GB/s raw, ~25 measured per direction
                                   for pinned, paged-KV block copies */
        .host_latency_us = 10.0,
        .ssd_gbps = 6.0,        /* one PCIe 4.0 NVMe drive, large reads */
        .ssd_latency_us = 100.0,
    };
}

int sim_tier_config_validate(const sim_tier_config_t *c, char *error, size_t error_size)
{
    if (!(c->host_gb >= 0.0) || !(c->ssd_gb >= 0.0) || !isfinite(c->host_gb) ||
        !isfinite(c->ssd_gb)) {
        snprintf(error, error_size, "tier sizes must be finite numbers >= 0");
        return -1;
    }
    if (c->ssd_gb > 0.0 && c->host_gb <= 0.0) {
        snprintf(error, error_size, "an SSD tier (--ssd-gb) needs a host tier (--host-gb) "
                                    "above it, as in kvrt");
        return -1;
    }
    if (!(c->host_gbps > 0.0) || !(c->ssd_gbps > 0.0) || !(c->host_latency_us >= 0.0) ||
        !(c->ssd_latency_us >= 0.0)) {
        snprintf(error, error_size, "tier bandwidths must be > 0 and latencies >= 0");
        return -1;
    }
    return 0;
}

/* ---- the directories ---------------------------------------------------------- */

static uint32_t slots_of(double gb, uint64_t block_bytes)
{
    double n = floor(gb * 1e9 / (double)block_bytes);
    return n > MAX_SLOTS ? MAX_SLOTS : (uint32_t)n;
}

/* A slot in `d`, its least recently used block giving way when full. */
static int32_t take_slot(slot_dir_t *d, kvrt_cache_block_name_t *evicted, bool *had_victim)
{
    *had_victim = false;
    int32_t slot = tier_dir_take(d);
    if (slot >= 0)
        return slot;
    int32_t victim = tier_dir_lru(d);
    if (victim < 0)
        return -1;
    *evicted = d->names[victim];
    *had_victim = true;
    tier_dir_release(d, victim);
    return tier_dir_take(d);
}

static void put_ssd(sim_tier_t *t, const kvrt_cache_block_name_t *name)
{
    kvrt_cache_block_name_t gone;
    bool evicted;
    int32_t slot = take_slot(&t->ssd, &gone, &evicted);
    if (slot >= 0) {
        tier_dir_publish(&t->ssd, slot, name);
        t->res.written_back_blocks++;
    }
}

/* Into host memory; the host's least recently used block is written back
 * to SSD (unless already there) to make room. */
static void put_host(sim_tier_t *t, const kvrt_cache_block_name_t *name)
{
    kvrt_cache_block_name_t gone;
    bool evicted;
    int32_t slot = take_slot(&t->host, &gone, &evicted);
    if (evicted && t->has_ssd && tier_dir_find(&t->ssd, &gone.key) < 0)
        put_ssd(t, &gone);
    if (slot >= 0)
        tier_dir_publish(&t->host, slot, name);
}

static kvrt_cache_sink_verdict_t sink(void *user, const kvrt_cache_victim_t *victim)
{
    sim_tier_t *t = user;
    int32_t below = tier_dir_find(&t->host, &victim->name.key);
    if (below >= 0) {
        tier_dir_touch(&t->host, below);
    } else if (!t->has_ssd || tier_dir_find(&t->ssd, &victim->name.key) < 0) {
        put_host(t, &victim->name);
        t->res.offloaded_blocks++;
    }
    return KVRT_CACHE_SINK_DROP; /* the copy is modeled: the block is free at once */
}

/* ---- open / close ------------------------------------------------------------- */

int sim_tier_open(const sim_tier_config_t *config, kvrt_cache_t *cache, kvrt_sched_t *sched,
                  uint64_t block_bytes, double prefill_us_per_token, sim_tier_t **out,
                  char *error, size_t error_size)
{
    *out = NULL;
    if (sim_tier_config_validate(config, error, error_size) != 0)
        return -1;
    uint32_t host = slots_of(config->host_gb, block_bytes);
    uint32_t ssd = slots_of(config->ssd_gb, block_bytes);
    if (config->host_gb <= 0.0)
        return 0;
    if (!cache || host == 0) {
        snprintf(error, error_size, "tiers need the prefix cache and a host tier of at "
                                    "least one block (%llu bytes)",
                 (unsigned long long)block_bytes);
        return -1;
    }
    sim_tier_t *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(error, error_size, "tier model: out of memory");
        return -1;
    }
    t->cfg = *config;
    t->cache = cache;
    t->sched = sched;
    t->pool = kvrt_cache_pool(cache);
    kvrt_pool_info_t info;
    kvrt_pool_info(t->pool, &info);
    t->tokens_per_block = info.tokens_per_block;
    t->block_bytes = block_bytes;
    t->prefill_us_per_token = prefill_us_per_token;
    t->has_ssd = ssd > 0;
    t->res = (sim_tier_results_t){.enabled = 1, .host_blocks = host, .ssd_blocks = ssd};
    int rc = tier_dir_init(&t->host, host) == KVRT_OK &&
                     (!t->has_ssd || tier_dir_init(&t->ssd, ssd) == KVRT_OK)
                 ? 0
                 : -1;
    if (rc == 0 && kvrt_cache_set_sink(cache, sink, t) != KVRT_OK)
        rc = -1;
    if (rc != 0) {
        snprintf(error, error_size, "tier model: %u host and %u SSD slots: out of memory or "
                                    "the cache has a sink", host, ssd);
        tier_dir_destroy(&t->host);
        tier_dir_destroy(&t->ssd);
        free(t);
        return -1;
    }
    *out = t;
    return 0;
}

void sim_tier_close(sim_tier_t *t)
{
    if (!t)
        return;
    kvrt_cache_set_sink(t->cache, NULL, NULL);
    tier_dir_destroy(&t->host);
    tier_dir_destroy(&t->ssd);
    free(t->queue);
    free(t->hits);
    free(t->hashes);
    free(t->from_ssd);
    free(t);
}

/* ---- onload ------------------------------------------------------------------- */

static int grow_scratch(sim_tier_t *t, uint32_t blocks)
{
    if (blocks <= t->scratch_blocks)
        return 0;
    int32_t *hits = realloc(t->hits, blocks * sizeof(*hits));
    if (hits)
        t->hits = hits;
    kvrt_block_hash_t *hashes = realloc(t->hashes, blocks * sizeof(*hashes));
    if (hashes)
        t->hashes = hashes;
    uint8_t *from_ssd = realloc(t->from_ssd, blocks);
    if (from_ssd)
        t->from_ssd = from_ssd;
    if (!hits || !hashes || !from_ssd)
        return -1;
    t->scratch_blocks = blocks;
    return 0;
}

static int queue_push(sim_tier_t *t, const onload_t *o)
{
    if (t->count == t->capacity) {
        size_t cap = t->capacity ? 2 * t->capacity : 64;
        onload_t *q = malloc(cap * sizeof(*q));
        if (!q)
            return -1;
        for (size_t i = 0; i < t->count; i++)
            q[i] = t->queue[(t->head + i) % t->capacity];
        free(t->queue);
        t->queue = q;
        t->capacity = cap;
        t->head = 0;
    }
    t->queue[(t->head + t->count) % t->capacity] = *o;
    t->count++;
    return 0;
}

int sim_tier_admit(sim_tier_t *t, kvrt_seq_id_t id, const int32_t *prompt, uint32_t prompt_len,
                   double now_us, char *error, size_t error_size)
{
    /* Whole blocks before the last token, as kvrt_tier_admit. */
    uint32_t max_blocks = prompt_len ? (prompt_len - 1) / t->tokens_per_block : 0;
    if (!max_blocks)
        return 0;
    if (grow_scratch(t, max_blocks) != 0) {
        snprintf(error, error_size, "tier model: out of memory for %u blocks", max_blocks);
        return -1;
    }
    kvrt_cache_match_t m;
    kvrt_status_t st = kvrt_cache_match(t->cache, prompt, prompt_len, NULL, max_blocks, t->hits,
                                        t->hashes, &m);
    if (st != KVRT_OK) {
        snprintf(error, error_size, "kvrt_cache_match: %s", kvrt_status_str(st));
        return -1;
    }
    if (m.num_blocks) /* the scheduler takes its own references */
        kvrt_pool_free(t->pool, m.num_blocks, t->hits);
    kvrt_block_hash_t root;
    kvrt_cache_root(t->cache, &root);
    uint32_t from_ssd;
    uint32_t below = tier_follow_below(&t->host, t->has_ssd ? &t->ssd : NULL,
                                       m.num_blocks ? &t->hashes[m.num_blocks - 1] : &root,
                                       prompt, t->tokens_per_block, m.num_blocks, max_blocks,
                                       NULL, t->hashes, t->from_ssd, &from_ssd);
    if (!below)
        return 0;
    /* The two stages on their FIFO links. */
    double ssd_end = now_us;
    if (from_ssd) {
        double start = fmax(now_us, t->ssd_link_free_us);
        ssd_end = start + t->cfg.ssd_latency_us +
                  (double)from_ssd * (double)t->block_bytes / (t->cfg.ssd_gbps * 1e3);
    }
    double host_start = fmax(ssd_end, t->host_link_free_us);
    double done = host_start + t->cfg.host_latency_us +
                  (double)below * (double)t->block_bytes / (t->cfg.host_gbps * 1e3);
    if (done - now_us >= (double)below * t->tokens_per_block * t->prefill_us_per_token) {
        t->res.recompute_cheaper++;
        return 0;
    }
    kvrt_arrival_params_t ap = {.num_tokens = (m.num_blocks + below) * t->tokens_per_block};
    kvrt_arrival_id_t arrival;
    uint32_t first, count;
    st = kvrt_seq_await_kv(t->sched, id, &ap, &arrival, &first, &count);
    /* Landed requests wait in their queue place with their blocks; the
     * scheduler takes them back when an older head needs them, so any
     * onload the pool has room for may start. */
    if (st == KVRT_ERR_NO_BLOCKS || st == KVRT_ERR_REQUEST_LIMIT) {
        t->res.no_room++;
        return 0;
    }
    if (st != KVRT_OK) {
        snprintf(error, error_size, "kvrt_seq_await_kv: %s", kvrt_status_str(st));
        return -1;
    }
    /* The transfer is committed: links busy, SSD blocks read into host
     * memory (as kvrt's tier does), host blocks touched. */
    if (from_ssd)
        t->ssd_link_free_us = ssd_end;
    t->host_link_free_us = done;
    for (uint32_t i = m.num_blocks; i < m.num_blocks + below; i++) {
        kvrt_cache_block_name_t name = {.content = t->hashes[i], .depth = i};
        kvrt_block_key(&t->hashes[i], NULL, &name.key);
        if (i) {
            kvrt_block_key(&t->hashes[i - 1], NULL, &name.parent_key);
            name.flags = KVRT_CACHE_NAME_HAS_PARENT;
        }
        int32_t h = tier_dir_find(&t->host, &name.key);
        if (h >= 0)
            tier_dir_touch(&t->host, h);
        else
            put_host(t, &name);
    }
    t->res.host_hit_blocks += below - from_ssd;
    t->res.ssd_hit_blocks += from_ssd;
    t->res.onloads++;
    onload_t o = {.start_us = now_us, .done_us = done, .arrival = arrival, .blocks = count};
    if (queue_push(t, &o) != 0) {
        kvrt_arrival_complete(t->sched, arrival, 0);
        snprintf(error, error_size, "tier model: out of memory");
        return -1;
    }
    return 0;
}

int sim_tier_land(sim_tier_t *t, double now_us, char *error, size_t error_size)
{
    while (t->count && t->queue[t->head].done_us <= now_us) {
        onload_t o = t->queue[t->head];
        t->head = (t->head + 1) % t->capacity;
        t->count--;
        /* Also for a request aborted meanwhile: the scheduler holds the
         * blocks until the arrival is completed. */
        kvrt_status_t st = kvrt_arrival_complete(t->sched, o.arrival, o.blocks);
        if (st != KVRT_OK) {
            snprintf(error, error_size, "kvrt_arrival_complete: %s", kvrt_status_str(st));
            return -1;
        }
        double ms = (o.done_us - o.start_us) / 1e3;
        t->onload_ms_sum += ms;
        if (ms > t->res.onload_ms_max)
            t->res.onload_ms_max = ms;
    }
    return 0;
}

double sim_tier_next_us(const sim_tier_t *t)
{
    return t && t->count ? t->queue[t->head].done_us : INFINITY;
}

void sim_tier_results(const sim_tier_t *t, sim_tier_results_t *out)
{
    if (!t) {
        *out = (sim_tier_results_t){0};
        return;
    }
    *out = t->res;
    uint64_t landed = t->res.onloads - t->count;
    out->onload_ms_mean = landed ? t->onload_ms_sum / (double)landed : 0.0;
}
