/*
 * soak_node_tier.c - a kvrt-soak node's tier stack (kvrt/tier.h): evicted
 * blocks are offloaded to host memory and SSD by kvrt; requests whose
 * prefix continues there come back through kvrt_tier_admit (waiting for
 * KV), and every onloaded block is verified against its content before
 * the request can read it.
 */
#include <stdio.h>

#include "soak_node_internal.h"

/* Moves offloads and onloads along (admissions complete their arrivals
 * here; the soak starts no onload of its own, so no ticket is reported) and
 * keeps the SSD tier's counters. */
void soak_tier_poll(node_t *n)
{
    if (!n->tier)
        return;
    kvrt_tier_completion_t done[16];
    uint32_t got = 0;
    kvrt_tier_poll(n->tier, done, 16, &got);
    kvrt_tier_stats_t ts;
    if (kvrt_tier_stats(n->tier, &ts) == KVRT_OK) {
        n->c.ssd_offloads = ts.ssd.offloads;
        n->c.ssd_drops = ts.ssd.drops;
        n->c.ssd_errors = ts.ssd.errors;
    }
}

/*
 * A queued request whose prefix continues below the pool (host memory or
 * SSD): kvrt_tier_admit puts it in waiting for KV and starts the onload;
 * kvrt_tier_poll completes the arrival. Returns 1 when an onload started.
 */
int soak_tier_onload_start(node_t *n, request_t *r)
{
    if (!n->tier)
        return 0;
    kvrt_tier_admission_t a;
    uint64_t deadline =
        (uint64_t)((soak_node_now_s() + 2.0 * n->cfg->transfer_timeout_ms / 1e3) * 1e9);
    if (kvrt_tier_admit(n->tier, n->sched, r->seq, r->tokens, r->prompt_len, NULL, deadline,
                        &a) != KVRT_OK ||
        a.arrival == 0)
        return 0;
    n->c.onloads++;
    r->onloading = 1;
    r->onload_first = a.match.gpu_blocks;
    r->onload_count = a.onload_blocks;
    r->onload_host = a.match.host_blocks < a.onload_blocks ? a.match.host_blocks
                                                            : a.onload_blocks;
    return 1;
}

/*
 * Before each step: onloads whose arrival kvrt_tier_poll completed. The
 * blocks the request now counts as computed past its pool hits are the
 * landed ones; each must hold its content (onload_bad counts those that do
 * not, and the request is aborted before it could read them).
 */
void soak_tier_onloads_landed(node_t *n)
{
    for (uint32_t i = 0; i < MAX_LIVE; i++) {
        request_t *r = &n->live[i];
        kvrt_seq_info_t info;
        if (!r->used || !r->onloading || kvrt_seq_info(n->sched, r->seq, &info) != KVRT_OK ||
            info.state == KVRT_SEQ_WAITING_KV)
            continue;
        r->onloading = 0;
        const int32_t *blocks = NULL;
        uint32_t nb = 0, end = info.computed_tokens / SOAK_BLOCK_TOKENS;
        if (end > r->onload_first + r->onload_count)
            end = r->onload_first + r->onload_count;
        if (end <= r->onload_first ||
            kvrt_seq_blocks(n->sched, r->seq, &blocks, &nb, NULL) != KVRT_OK || end > nb)
            continue;
        int bad = 0;
        for (uint32_t b = r->onload_first; b < end; b++) {
            if (soak_node_block_check(n, blocks[b], &r->hashes[b]) != SOAK_BLOCK_OK) {
                bad = 1;
                n->c.onload_bad++;
                fprintf(stderr, "kvrt-soak node %u: onloaded block %u of request %llu (pool %d) "
                                "does not hold its content\n",
                        n->cfg->index, b, (unsigned long long)r->id, blocks[b]);
            } else if (b - r->onload_first < r->onload_host) {
                n->c.onload_host_blocks++;
            } else {
                n->c.onload_ssd_blocks++;
            }
        }
        r->onloaded_end = end;
        if (bad)
            kvrt_seq_abort(n->sched, r->seq);
    }
}

/* After each step: onloads the scheduler gave up at their deadline. */
void soak_tier_onloads_given_up(node_t *n)
{
    for (uint32_t i = 0; i < MAX_LIVE; i++) {
        request_t *r = &n->live[i];
        kvrt_seq_info_t info;
        if (r->used && r->onloading && kvrt_seq_info(n->sched, r->seq, &info) == KVRT_OK &&
            info.state != KVRT_SEQ_WAITING_KV) {
            r->onloading = 0;
            n->c.onload_timeouts++;
        }
    }
}
