/*
 * tier_admit.c - onload through the scheduler (kvrt_tier_admit in
 * include/kvrt/tier.h): a queued request whose prompt continues in host
 * memory or on SSD waits for KV (kvrt_seq_await_kv) while the tier brings
 * the blocks back into the scheduler's own blocks for it; the ticket's end
 * completes the arrival (tier.c, finish_ticket). The scheduler's arrival
 * deadline is the recompute fallback for an onload that is too slow, and a
 * block that does not land ends the landed run: the rest is recomputed.
 */
#include <stdlib.h>

#include "kv/pool_internal.h"

#include "sched/hooks.h"
#include "tier/tier_internal.h"

KVRT_EXPORT kvrt_status_t kvrt_tier_admit(kvrt_tier_t *tier, kvrt_sched_t *sched,
                                          kvrt_seq_id_t id, const int32_t *tokens,
                                          uint32_t num_tokens, const kvrt_hash_keys_t *keys,
                                          uint64_t deadline_ns, kvrt_tier_admission_t *out)
{
    if (!tier)
        return KVRT_ERR_INVALID_ARG;
    kvrt_pool_t *pool = tier_pool(tier);
    kvrt_ctx_t *ctx = kvrt_pool_ctx(pool);
    if (!sched || !tokens || !num_tokens)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "tier admit needs sched and tokens");
    /* The blocks the scheduler allocates are onloaded into by id: of
     * another pool, they would name blocks someone else holds here. */
    if (kvrt_sched_num_groups(sched) != 1 || kvrt_sched_group_pool(sched, 0) != pool ||
        kvrt_sched_group_cache(sched, 0) != tier_cache(tier))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "tier admit: the scheduler is not over the tier's pool and cache "
                         "(one cache group)");
    kvrt_seq_info_t info;
    kvrt_status_t status = kvrt_seq_info(sched, id, &info);
    if (status != KVRT_OK)
        return status;
    if (info.prompt_tokens != num_tokens)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "tier admit: %u tokens given, request %llu has a %u-token prompt",
                         num_tokens, (unsigned long long)id, info.prompt_tokens);
    kvrt_tier_admission_t a = {0};
    kvrt_kv_layout_t layout;
    kvrt_pool_layout(pool, &layout);
    /* Whole blocks before the last token: it is always recomputed (its
     * logits), and a partial block must stay writable. */
    uint32_t max_blocks = (num_tokens - 1) / layout.tokens_per_block;
    if (!max_blocks)
        goto done;
    int32_t *hits = malloc(max_blocks * sizeof(*hits));
    kvrt_block_hash_t *hashes = malloc(max_blocks * sizeof(*hashes));
    if (!hits || !hashes) {
        free(hits);
        free(hashes);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "tier admit: %u blocks", max_blocks);
    }
    status = kvrt_tier_match(tier, tokens, num_tokens, keys, max_blocks, hits, hashes, &a.match);
    if (status != KVRT_OK)
        goto out;
    /* The scheduler takes its own references on the pool hits. */
    if (a.match.gpu_blocks)
        kvrt_pool_free(pool, a.match.gpu_blocks, hits);
    uint32_t want = a.match.gpu_blocks + a.match.host_blocks + a.match.ssd_blocks;
    if (want == a.match.gpu_blocks)
        goto out;
    kvrt_arrival_params_t ap = {
        .field_mask = deadline_ns ? KVRT_ARRIVAL_PARAM_DEADLINE : 0,
        .num_tokens = want * layout.tokens_per_block,
        .deadline_ns = deadline_ns};
    uint32_t first = 0, count = 0;
    status = kvrt_seq_await_kv(sched, id, &ap, &a.arrival, &first, &count);
    if (status != KVRT_OK)
        goto out;
    const int32_t *blocks;
    uint32_t table_blocks;
    kvrt_seq_blocks(sched, id, &blocks, &table_blocks, NULL);
    if (first + count > want || first + count > table_blocks) {
        /* Not the prompt the tier matched (a caller's mistake): start
         * nothing, let the request recompute. */
        kvrt_arrival_complete(sched, a.arrival, 0);
        a.arrival = 0;
        status = kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                           "tier admit: request %llu's blocks do not follow its prompt",
                           (unsigned long long)id);
        goto out;
    }
    status = tier_onload_start(tier, first, count, hashes + first,
                               first ? &hashes[first - 1] : NULL, keys, blocks + first, sched,
                               a.arrival, &a.ticket, &a.onload_blocks);
    if (status != KVRT_OK) {
        kvrt_arrival_complete(sched, a.arrival, 0);
        a.arrival = 0;
        goto out;
    }
    tier_admit_stats(tier)->admitted++;
out:
    free(hits);
    free(hashes);
    if (status != KVRT_OK)
        return status;
done:
    if (out)
        *out = a;
    return KVRT_OK;
}
