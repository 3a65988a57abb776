/*
 * ngram.c - the n-gram prompt-lookup proposer: the draft for a sequence is
 * what followed the latest earlier occurrence of its last n tokens (n from
 * ngram_max down to ngram_min), as in vLLM's prompt lookup decoding.
 *
 * Instead of scanning the whole context every step (O(context) per
 * sequence per step, the cost that makes Python proposers slow), each
 * request keeps hash chains over its positions, keyed by the ngram_min
 * tokens that end there (zlib's match finder). A step indexes the positions
 * appended since the last one (amortized O(1)) and walks one chain, at most
 * NGRAM_MAX_CANDIDATES long, extending each candidate backwards to measure
 * its match length. The longest match wins; among equals, the latest.
 */
#include <string.h>

#include "sched_internal.h"

#define NGRAM_MAX_CANDIDATES 16u
#define NGRAM_MIN_HEAD 64u
#define NGRAM_MAX_HEAD 4096u

static uint32_t head_entries(uint32_t capacity)
{
    uint32_t n = NGRAM_MIN_HEAD;
    while (n < NGRAM_MAX_HEAD && n < capacity / 2)
        n *= 2;
    return n;
}

size_t ngram_bytes(const kvrt_sched_t *s, uint32_t capacity)
{
    if (!s->ngram_min)
        return 0;
    return ((size_t)head_entries(capacity) + capacity) * sizeof(int32_t);
}

void ngram_init(ngram_index_t *ix, void *memory, uint32_t capacity)
{
    uint32_t entries = head_entries(capacity);
    ix->head = memory;
    ix->prev = ix->head + entries;
    ix->head_mask = entries - 1;
    ix->indexed = 0;
    memset(ix->head, 0xff, (size_t)entries * sizeof(int32_t)); /* -1: empty */
}

/* Hash of the n tokens ending at position end (inclusive). */
static inline uint32_t gram_hash(const int32_t *tokens, uint32_t end, uint32_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (uint32_t k = 0; k < n; k++) {
        h ^= (uint32_t)tokens[end - k];
        h *= 0xff51afd7ed558ccdull;
        h ^= h >> 29;
    }
    return (uint32_t)(h >> 32);
}

uint32_t ngram_propose(const kvrt_sched_t *s, ngram_index_t *ix, const int32_t *tokens,
                       uint32_t n, uint32_t limit, int32_t *out)
{
    const uint32_t nmin = s->ngram_min, nmax = s->ngram_max;
    if (n < nmin + 1 || limit == 0)
        return 0;
    /* Index every position that can start a continuation: p <= n - 2 (the
     * last token's own gram is the query, not a candidate). */
    uint32_t first = ix->indexed > nmin - 1 ? ix->indexed : nmin - 1;
    for (uint32_t p = first; p + 1 < n; p++) {
        uint32_t h = gram_hash(tokens, p, nmin) & ix->head_mask;
        ix->prev[p] = ix->head[h];
        ix->head[h] = (int32_t)p;
    }
    if (n - 1 > ix->indexed)
        ix->indexed = n - 1;

    const uint32_t last = n - 1;
    int32_t cand = ix->head[gram_hash(tokens, last, nmin) & ix->head_mask];
    uint32_t best_len = 0, best_end = 0;
    for (uint32_t walked = 0; cand >= 0 && walked < NGRAM_MAX_CANDIDATES; walked++) {
        uint32_t p = (uint32_t)cand;
        uint32_t len = 0;
        /* Match backwards from p against the suffix ending at last. */
        while (len < nmax && len <= p && tokens[p - len] == tokens[last - len])
            len++;
        if (len >= nmin && len > best_len) {
            best_len = len;
            best_end = p;
            if (len == nmax)
                break;
        }
        cand = ix->prev[p];
    }
    if (!best_len)
        return 0;
    uint32_t count = last - best_end; /* tokens after the match, up to the end */
    if (count > limit)
        count = limit;
    memcpy(out, tokens + best_end + 1, (size_t)count * sizeof(int32_t));
    return count;
}
