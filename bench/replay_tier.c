/*
 * replay_tier.c - kvrt-replay with tiers below the pool
 * (`--host-capacity N --ssd-capacity N`, in blocks): the real tier stack
 * (include/kvrt/tier.h) under the replay's cache, on a pool whose memory
 * kvrt allocates (1 layer x 1 head x 1 dim, 512 tokens: 2 KiB blocks), with
 * the SSD tier's file in a directory of its own under --ssd-dir (default
 * /tmp), removed at the end.
 *
 * Per request the pool is matched first; where its prefix continues in host
 * memory or on SSD, fresh pool blocks are allocated, onloaded, and waited
 * for; then the replay goes on as without tiers from the first block that
 * did not land. After each request the tier is drained (offloads complete,
 * write-back, the blocks next in line for eviction copied ahead).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "replay.h"

kvrt_status_t replay_tier_open(kvrt_cache_t *cache, const replay_tiers_t *opts,
                               replay_tier_t *out)
{
    memset(out, 0, sizeof(*out));
    kvrt_tier_params_t p = {.field_mask = KVRT_TIER_PARAM_HOST_BLOCKS |
                                          KVRT_TIER_PARAM_QUEUE_DEPTH,
                            .host_blocks = opts->host_blocks, .queue_depth = 32};
    if (opts->ssd_blocks) {
        snprintf(out->dir, sizeof(out->dir), "%s/kvrt-replay-XXXXXX",
                 opts->ssd_dir ? opts->ssd_dir : "/tmp");
        if (!mkdtemp(out->dir)) {
            fprintf(stderr, "kvrt-replay: cannot create a directory under %s\n",
                    opts->ssd_dir ? opts->ssd_dir : "/tmp");
            return KVRT_ERR_IO;
        }
        p.field_mask |= KVRT_TIER_PARAM_SSD;
        p.ssd_dir = out->dir;
        p.ssd_blocks = opts->ssd_blocks;
    }
    return kvrt_tier_create(cache, &p, &out->tier);
}

void replay_tier_close(replay_tier_t *t)
{
    kvrt_tier_stats_t s;
    if (kvrt_tier_stats(t->tier, &s) == KVRT_OK)
        fprintf(stderr, "kvrt-replay: tiers: host %llu offloads, %llu drops, %llu evictions; "
                "ssd %llu offloads, %llu drops, %llu evictions, %llu errors%s\n",
                (unsigned long long)s.host.offloads, (unsigned long long)s.host.drops,
                (unsigned long long)s.host.evictions, (unsigned long long)s.ssd.offloads,
                (unsigned long long)s.ssd.drops, (unsigned long long)s.ssd.evictions,
                (unsigned long long)s.ssd.errors, s.ssd_buffered ? " (buffered I/O)" : "");
    kvrt_tier_destroy(t->tier);
    t->tier = NULL;
    if (t->dir[0]) {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "kvrt-replay: could not remove %s\n", t->dir);
    }
}

kvrt_status_t replay_tier_match(replay_tier_t *t, kvrt_pool_t *pool, const int32_t *tokens,
                                uint32_t n, int32_t *blocks, kvrt_block_hash_t *hashes,
                                uint32_t *hits_out, uint64_t by_tier[3])
{
    kvrt_tier_match_t m;
    kvrt_status_t s = kvrt_tier_match(t->tier, tokens, n * TRACE_BLOCK_TOKENS, NULL, n, blocks,
                                      hashes, &m);
    if (s != KVRT_OK)
        return s;
    uint32_t below = m.host_blocks + m.ssd_blocks, landed = 0;
    if (below) {
        int32_t *fresh = blocks + m.gpu_blocks;
        s = kvrt_pool_alloc(pool, below, fresh);
        if (s != KVRT_OK)
            return s;
        uint64_t ticket;
        s = kvrt_tier_onload(t->tier, m.gpu_blocks, below, hashes + m.gpu_blocks,
                             m.gpu_blocks ? &hashes[m.gpu_blocks - 1] : NULL, NULL, fresh,
                             &ticket, NULL);
        kvrt_tier_completion_t done = {0};
        uint32_t got = 0;
        if (s == KVRT_OK)
            s = kvrt_tier_drain(t->tier, 60000, &done, 1, &got);
        if (s != KVRT_OK)
            return s;
        landed = got ? done.landed : 0;
        /* Blocks that did not land are recomputed: give them back. */
        if (below > landed)
            kvrt_pool_free(pool, below - landed, fresh + landed);
    }
    by_tier[0] += m.gpu_blocks;
    uint32_t from_host = landed < m.host_blocks ? landed : m.host_blocks;
    by_tier[1] += from_host;
    by_tier[2] += landed - from_host;
    *hits_out = m.gpu_blocks + landed;
    return KVRT_OK;
}

/* Between requests the tier finishes what it started: an engine step
 * (milliseconds) is long next to copying a few blocks, and the replay has
 * no step to overlap with. */
kvrt_status_t replay_tier_poll(replay_tier_t *t)
{
    uint32_t n;
    return kvrt_tier_drain(t->tier, 60000, NULL, 0, &n);
}
