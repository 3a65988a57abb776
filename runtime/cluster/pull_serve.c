/*
 * pull_serve.c - the peer's side of a pull: a hand-off send of the blocks
 * the ticket names, taken from wherever this node holds them. The leading
 * run its prefix cache holds is referenced (it cannot be evicted while
 * read) and posted at once; when a tier stack is given, the run that
 * continues in host memory or on SSD is brought back into pool blocks
 * allocated for it (kvrt_tier_onload, the same path a local hit below the
 * pool takes) and posted when the tier reports those blocks landed, which
 * the engine tells the sender with kvrt_cluster_pull_onloaded(). The pool
 * is what the sender's region registers, so the puller's transfer engine
 * writes out of registered memory whichever tier the block came from.
 */
#include <stdlib.h>

#include "handoff_send.h"

static void onloading_unlink(kvrt_cluster_handoff_sender_t *s, kvrt_cluster_handoff_send_t *send)
{
    for (kvrt_cluster_handoff_send_t **p = &s->onloading; *p; p = &(*p)->src.next_onloading)
        if (*p == send) {
            *p = send->src.next_onloading;
            break;
        }
    send->src.next_onloading = NULL;
    send->src.onloading = false;
}

static void source_free_blocks(kvrt_cluster_handoff_send_t *send)
{
    pull_source_t *src = &send->src;
    if (src->pinned + src->staged > 0)
        kvrt_pool_free(src->pool, src->pinned + src->staged, src->blocks);
    send->sender->staged_blocks -= src->staged;
    free(src->blocks);
    src->blocks = NULL;
    src->pinned = src->staged = 0;
}

bool pull_source_release(kvrt_cluster_handoff_send_t *send)
{
    if (send->src.onloading) {
        /* The tier may still copy into the staged blocks. */
        send->src.ended = true;
        return false;
    }
    source_free_blocks(send);
    return true;
}

void pull_sources_abandon(kvrt_cluster_handoff_sender_t *sender)
{
    while (sender->onloading) {
        kvrt_cluster_handoff_send_t *send = sender->onloading;
        onloading_unlink(sender, send);
        source_free_blocks(send);
        free(send);
    }
}

/* Posts blocks [posted, limit) of the source, in batches. */
static kvrt_status_t post_held(kvrt_cluster_handoff_send_t *send)
{
    kvrt_status_t st = KVRT_OK;
    while (st == KVRT_OK && send->posted < send->limit) {
        uint32_t count = send->limit - send->posted;
        if (count > HANDOFF_BATCH_MAX)
            count = HANDOFF_BATCH_MAX;
        st = kvrt_cluster_handoff_send_blocks(send, send->src.blocks + send->posted, count);
    }
    return st;
}

/* Starts bringing back blocks [pinned, n) of the ticket from the tier
 * stack into freshly allocated pool blocks. Nothing is started (and the
 * pull ends after the cached run) when the pool or the staging budget has
 * no room or the tier holds nothing there. */
static void stage_from_tier(kvrt_cluster_handoff_send_t *send, const kvrt_hash_keys_t *keys,
                            const kvrt_block_hash_t *contents, uint32_t first, uint32_t n)
{
    kvrt_cluster_handoff_sender_t *s = send->sender;
    pull_source_t *src = &send->src;
    uint32_t want = n - src->pinned;
    if (want == 0 || s->staged_blocks + want > SENDER_MAX_STAGED)
        return;
    int32_t *staged = src->blocks + src->pinned;
    if (kvrt_pool_alloc(src->pool, want, staged) != KVRT_OK)
        return;
    uint32_t index = first + src->pinned;
    uint32_t accepted = 0;
    uint64_t ticket = 0;
    kvrt_status_t st =
        kvrt_tier_onload(src->tier, index, want, contents + index,
                         index > 0 ? &contents[index - 1] : NULL, keys, staged, &ticket, &accepted);
    if (st != KVRT_OK) {
        kvrt_pool_free(src->pool, want, staged);
        return;
    }
    /* The ticket is reported even when nothing was started; until then
     * the tier owns what it writes into, so every staged block waits. */
    src->staged = want;
    s->staged_blocks += want;
    src->tier_ticket = ticket;
    src->onloading = true;
    src->next_onloading = s->onloading;
    s->onloading = send;
    send->limit = src->pinned + accepted;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_pull_serve(kvrt_cluster_handoff_sender_t *sender,
                                                  kvrt_pool_t *pool, kvrt_cache_t *cache,
                                                  kvrt_tier_t *tier, const kvrt_hash_keys_t *keys,
                                                  const kvrt_block_hash_t *contents,
                                                  uint32_t num_contents, const void *ticket,
                                                  size_t length,
                                                  kvrt_cluster_handoff_send_t **send_out)
{
    if (!sender || !pool || !cache || (!contents && num_contents > 0) || !ticket || !send_out)
        return kvrt_fail(sender ? sender->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    kvrt_cluster_handoff_send_t *send = NULL;
    kvrt_status_t st = kvrt_cluster_handoff_send_begin(sender, ticket, length, &send);
    if (st != KVRT_OK)
        return st;
    uint32_t first = send->ticket.first_block, n = send->ticket.num_blocks;
    if (first > num_contents || n > num_contents - first) {
        kvrt_cluster_handoff_send_end(send);
        return kvrt_fail(sender->ctx, KVRT_ERR_INVALID_ARG,
                         "the ticket names blocks %u..%u of a prompt of %u blocks", first,
                         first + n, num_contents);
    }
    pull_source_t *src = &send->src;
    src->pool = pool;
    src->tier = tier;
    if (n > 0 && !(src->blocks = malloc(n * sizeof(int32_t)))) {
        kvrt_cluster_handoff_send_end(send);
        return kvrt_fail(sender->ctx, KVRT_ERR_NO_MEMORY, "pull of %u blocks", n);
    }
    /* Each hit takes a reference: the block cannot be evicted or reused
     * while it is read; send_end gives them back. */
    while (src->pinned < n) {
        int32_t block = KVRT_NULL_BLOCK;
        if (kvrt_cache_lookup(cache, &contents[first + src->pinned], keys, &block) != KVRT_OK ||
            block == KVRT_NULL_BLOCK)
            break;
        src->blocks[src->pinned++] = block;
    }
    send->limit = src->pinned;
    if (tier && src->pinned < n)
        stage_from_tier(send, keys, contents, first, n);
    uint32_t cached = src->pinned;
    uint32_t limit = send->limit;
    send->limit = cached; /* the staged run is posted once it landed */
    st = post_held(send);
    send->limit = limit;
    if (st != KVRT_OK) {
        kvrt_cluster_handoff_send_end(send);
        return st;
    }
    *send_out = send;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_pull_onloaded(kvrt_cluster_handoff_sender_t *sender,
                                                     const kvrt_tier_t *tier,
                                                     const kvrt_tier_completion_t *done,
                                                     uint32_t count)
{
    if (!sender || !tier || (!done && count > 0))
        return kvrt_fail(sender ? sender->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    for (uint32_t i = 0; i < count; i++) {
        kvrt_cluster_handoff_send_t *send = sender->onloading;
        while (send && !(send->src.tier == tier && send->src.tier_ticket == done[i].ticket))
            send = send->src.next_onloading;
        if (!send)
            continue; /* the engine's own onload */
        onloading_unlink(sender, send);
        if (send->src.ended) {
            source_free_blocks(send);
            free(send);
            continue;
        }
        uint32_t landed = done[i].landed < send->src.staged ? done[i].landed : send->src.staged;
        send->limit = send->src.pinned + landed;
        kvrt_status_t st = post_held(send);
        if (st != KVRT_OK && send->failure == KVRT_OK)
            send->failure = st;
    }
    return KVRT_OK;
}
