/*
 * replay_belady.c - kvrt-replay's clairvoyant bound: Belady's MIN with
 * prefix semantics (`--policy belady`).
 *
 * MIN knows the whole trace: when the pool is over capacity it evicts the
 * cached block whose next use is farthest in the future (never used again
 * first). It runs the same request semantics as the real replay (a request
 * hits the leading run of its blocks that are cached, then every block is
 * inserted or touched, in order) over its own bookkeeping, not through
 * kvrt's cache, because no online policy can be given the future.
 *
 * Prefix semantics: a trace id stands for a block and every block before
 * it, so any request that uses a block uses its ancestors too, and an
 * ancestor's next use is never later than its descendant's. Ties (most
 * often "never again") go to the deepest block. So MIN never keeps a block
 * without its ancestors, every cached block it keeps could hit as part of
 * a leading run, and its hits bound those of any eviction policy under
 * these semantics (MIN maximizes "block present when used"; a prefix hit
 * needs that and more). A newly inserted block may be the farthest one
 * itself: then it is the victim at once (MIN bypasses it).
 */
#include <stdlib.h>
#include <string.h>

#include "replay.h"

#define NEVER UINT32_MAX

typedef struct min_entry {
    uint32_t next_use;  /* request index of the next use, NEVER for none */
    uint32_t depth;
    uint32_t id;        /* dense block id */
} min_entry_t;

typedef struct min_heap {
    min_entry_t *e;
    uint32_t *pos;      /* 1-based heap position per dense id, 0: not cached */
    uint32_t n;
} min_heap_t;

/* Farther next use first, then the deeper block. */
static inline bool evicts_before(const min_entry_t *a, const min_entry_t *b)
{
    if (a->next_use != b->next_use)
        return a->next_use > b->next_use;
    return a->depth > b->depth;
}

static inline void put(min_heap_t *h, uint32_t i, const min_entry_t *x)
{
    h->e[i] = *x;
    h->pos[x->id] = i + 1;
}

static void sift_up(min_heap_t *h, uint32_t i)
{
    min_entry_t x = h->e[i];
    while (i > 0 && evicts_before(&x, &h->e[(i - 1) / 2])) {
        put(h, i, &h->e[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    put(h, i, &x);
}

static void sift_down(min_heap_t *h, uint32_t i)
{
    min_entry_t x = h->e[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && evicts_before(&h->e[c + 1], &h->e[c]))
            c++;
        if (!evicts_before(&h->e[c], &x))
            break;
        put(h, i, &h->e[c]);
        i = c;
    }
    put(h, i, &x);
}

static void heap_set(min_heap_t *h, const min_entry_t *x)
{
    uint32_t p = h->pos[x->id];
    if (!p) {
        put(h, h->n++, x);
        sift_up(h, h->n - 1);
        return;
    }
    put(h, p - 1, x); /* next uses only move forward: sink or stay */
    sift_up(h, p - 1);
    sift_down(h, h->pos[x->id] - 1);
}

static void heap_pop(min_heap_t *h)
{
    h->pos[h->e[0].id] = 0;
    if (--h->n) {
        put(h, 0, &h->e[h->n]);
        sift_down(h, 0);
    }
}

static int compare_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Dense ids 0..n-1 for the trace's hash ids (sorted, deduplicated). */
static uint32_t *dense_ids(const trace_t *trace, uint32_t *num_ids_out)
{
    size_t n = trace->num_hash_ids;
    int64_t *sorted = malloc((n ? n : 1) * sizeof(*sorted));
    uint32_t *dense = malloc((n ? n : 1) * sizeof(*dense));
    if (!sorted || !dense) {
        free(sorted);
        free(dense);
        return NULL;
    }
    if (n) { /* a trace of 0-token prompts has no ids (and hash_ids may be NULL) */
        memcpy(sorted, trace->hash_ids, n * sizeof(*sorted));
        qsort(sorted, n, sizeof(*sorted), compare_i64);
    }
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (!u || sorted[i] != sorted[u - 1])
            sorted[u++] = sorted[i];
    for (size_t i = 0; i < n; i++) {
        const int64_t *hit = bsearch(&trace->hash_ids[i], sorted, u, sizeof(*sorted),
                                     compare_i64);
        dense[i] = (uint32_t)(hit - sorted);
    }
    free(sorted);
    *num_ids_out = (uint32_t)u;
    return dense;
}

/* next[k]: the request that next uses the block of occurrence k. */
static uint32_t *next_uses(const trace_t *trace, const uint32_t *dense, uint32_t num_ids)
{
    size_t n = trace->num_hash_ids;
    uint32_t *next = malloc((n ? n : 1) * sizeof(*next));
    uint32_t *last = malloc(((size_t)num_ids + 1) * sizeof(*last));
    if (!next || !last) {
        free(next);
        free(last);
        return NULL;
    }
    for (uint32_t i = 0; i < num_ids; i++)
        last[i] = NEVER;
    for (size_t r = trace->num_requests; r-- > 0;) {
        const trace_request_t *q = &trace->requests[r];
        for (uint32_t j = 0; j < q->num_hash_ids; j++) {
            uint64_t k = q->first_hash_id + j;
            next[k] = last[dense[k]];
        }
        for (uint32_t j = 0; j < q->num_hash_ids; j++)
            last[dense[q->first_hash_id + j]] = (uint32_t)r;
    }
    free(last);
    return next;
}

int replay_belady(const trace_t *trace, uint32_t capacity, replay_result_t *out)
{
    uint32_t num_ids = 0;
    uint32_t *dense = dense_ids(trace, &num_ids);
    uint32_t *next = dense ? next_uses(trace, dense, num_ids) : NULL;
    min_heap_t h = {
        .e = malloc(((size_t)num_ids + 1) * sizeof(*h.e)),
        .pos = calloc((size_t)num_ids + 1, sizeof(*h.pos)),
    };
    bool *seen = calloc((size_t)num_ids + 1, sizeof(*seen));
    int rc = -1;
    if (!dense || !next || !h.e || !h.pos || !seen)
        goto out;
    uint32_t limit = capacity == REPLAY_UNBOUNDED ? num_ids : capacity;
    uint64_t hits = 0, evictions = 0, miss_evicted = 0, miss_never = 0;
    for (size_t r = 0; r < trace->num_requests; r++) {
        const trace_request_t *q = &trace->requests[r];
        bool run = true;
        for (uint32_t j = 0; j < q->num_hash_ids; j++) {
            uint64_t k = q->first_hash_id + j;
            uint32_t id = dense[k];
            bool cached = h.pos[id] != 0;
            run = run && cached;
            hits += run;
            if (!run) /* the replay's miss reasons count every missed block */
                miss_evicted += seen[id], miss_never += !seen[id];
            seen[id] = true;
            heap_set(&h, &(min_entry_t){.next_use = next[k], .depth = j, .id = id});
            if (h.n > limit) {
                heap_pop(&h);
                evictions++;
            }
        }
    }
    *out = (replay_result_t){
        .policy = "belady",
        .capacity = capacity,
        .hit_blocks = hits,
        .total_blocks = trace->num_hash_ids,
        .evictions = evictions,
        .miss_evicted_blocks = miss_evicted,
        .miss_never_cached_blocks = miss_never,
    };
    rc = 0;
out:
    free(dense);
    free(next);
    free(h.e);
    free(h.pos);
    free(seen);
    return rc;
}
