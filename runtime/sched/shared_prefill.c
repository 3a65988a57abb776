/*
 * shared_prefill.c - prompts that share a prefix, computed once.
 *
 * Blocks are cached at the commit that fills them, so two requests with
 * the same long prefix admitted in one step would each compute it (as
 * would one admitted while another is still prefilling it in chunks):
 * twice the prefill, twice the blocks. A production engine meets this at
 * once: parallel sampling (n > 1) adds n requests with one prompt, and a
 * burst of requests shares a long system prompt. Computing the block in
 * the same step for both (vLLM caches blocks when it schedules them) would
 * have one entry's attention read K/V another entry writes in the same
 * forward pass, which kvrt's plan does not promise. Instead the request
 * waits (SGLang's scheduler defers such requests too):
 *
 *   - every prefilling request planned in a step notes the key of the
 *     block at its committed length (the first of its blocks not yet
 *     cached: blocks before it were cached at the commits that filled
 *     them), when it writes to the cache and has at least share_blocks
 *     full blocks from there;
 *   - a request coming up for admission is matched as usual; when the key
 *     of the block after its hits is one noted this step, and its next
 *     share_blocks blocks hold the same content as the noting request's,
 *     it gives its hits back, leaves the heap for the rest of the step and
 *     takes its place again after admission (sched_shared_requeue): the
 *     next step matches it again, past the blocks just committed.
 *
 * A request waits only while another computes its next blocks, so each
 * wait is bounded by that request's progress: when it ends, is preempted
 * or has committed them, nothing is noted for them and the waiting
 * request is admitted (or waits for the next shared blocks). The cache
 * counts one query per admission: a waiting request's match is taken back
 * (kvrt_cache_forget_query), as are the scheduler's own counts (they are
 * made at admission only).
 *
 * Noted keys live in an open-addressing table sized for max_seqs entries
 * (each planned request notes at most one key a step) at half load, valid
 * for the step whose epoch they carry, so nothing is cleared per step.
 */
#include "sched_internal.h"

bool sched_shared_alloc(kvrt_sched_t *s)
{
    if (!s->share_blocks || !s->cache || s->hybrid) {
        s->share_blocks = 0; /* one group with a cache only (sched.h) */
        return true;
    }
    uint32_t capacity = 2;
    while (capacity < 2 * s->max_seqs)
        capacity *= 2;
    s->shared = kvrt_calloc_large_resident(capacity, sizeof(*s->shared));
    s->share_waiting = kvrt_calloc_large_resident(s->max_seqs, sizeof(*s->share_waiting));
    s->shared_mask = capacity - 1;
    return s->shared && s->share_waiting;
}

void sched_shared_free(kvrt_sched_t *s)
{
    kvrt_free_large(s->shared);
    kvrt_free_large(s->share_waiting);
}

/* The content hash of q's full block j, chained from the last q knows. */
static void content_of(const kvrt_sched_t *s, seq_t *q, uint32_t j, kvrt_block_hash_t *out)
{
    if (j < q->num_hashed) {
        *out = q->hashes[j];
        return;
    }
    const uint32_t tpb = s->tokens_per_block;
    const int32_t *tokens = sched_seq_tokens(q, (j + 1) * tpb);
    kvrt_block_hash_t h = q->num_hashed ? q->hashes[q->num_hashed - 1] : s->root;
    for (uint32_t k = q->num_hashed; k <= j; k++)
        kvrt_block_hash(&h, tokens + (size_t)k * tpb, tpb, k * tpb, sched_seq_keys(q), &h);
    *out = h;
}

/* What everything before q's block j hashes to: the root, or block j - 1's
 * content hash (known once q's blocks before j are hashed, as they are for
 * a request's hits and its committed blocks). */
static void parent_of(const kvrt_sched_t *s, seq_t *q, uint32_t j, kvrt_block_hash_t *out)
{
    if (j == 0)
        *out = s->root;
    else
        content_of(s, q, j - 1, out);
}

/* The table's key of q's block j: its parent's hash mixed with the block's
 * first four tokens. No hash of the block itself: requests it brings
 * together are compared token by token (share_next_blocks), and two with
 * the same parent but other next tokens rarely meet in one probe run. */
static void key_of(const kvrt_sched_t *s, seq_t *q, uint32_t j, kvrt_block_hash_t *key)
{
    const uint32_t tpb = s->tokens_per_block;
    const int32_t *t = sched_seq_tokens(q, (j + 1) * tpb) + (size_t)j * tpb;
    uint64_t head = (uint32_t)t[0];
    if (tpb >= 4)
        head |= (uint64_t)(uint32_t)t[1] << 32 ^ (uint64_t)(uint32_t)t[2] * 0x9E3779B97F4A7C15ull ^
                (uint64_t)(uint32_t)t[3] << 17;
    parent_of(s, q, j, key);
    key->lo ^= head * 0xC2B2AE3D27D4EB4Full;
}

static inline bool same_hash(const kvrt_block_hash_t *a, const kvrt_block_hash_t *b)
{
    return a->lo == b->lo && a->hi == b->hi;
}

/* The table's entry for key: the one holding it, or the empty one where it
 * would go. */
static shared_key_t *probe(const kvrt_sched_t *s, const kvrt_block_hash_t *key)
{
    for (uint32_t i = (uint32_t)key->lo & s->shared_mask;; i = (i + 1) & s->shared_mask) {
        shared_key_t *e = &s->shared[i];
        if (e->epoch != s->shared_epoch || same_hash(&e->key, key))
            return e;
    }
}

void sched_shared_note_slow(kvrt_sched_t *s, seq_t *q)
{
    if (q->cache_flags & SCHED_CACHE_NO_WRITE)
        return;
    const uint32_t j = q->computed >> s->block_shift;
    if (((uint64_t)j + s->share_blocks) * s->tokens_per_block > q->num_tokens)
        return; /* fewer than share_blocks full blocks left to share */
    if (s->shared_step != s->step_count) { /* the step's first key */
        s->shared_step = s->step_count;
        if (++s->shared_epoch == 0) { /* wrapped: old epochs could come back */
            memset(s->shared, 0, (size_t)(s->shared_mask + 1) * sizeof(*s->shared));
            s->shared_epoch = 1;
        }
    }
    kvrt_block_hash_t key;
    key_of(s, q, j, &key);
    shared_key_t *e = probe(s, &key);
    if (e->epoch == s->shared_epoch)
        return; /* another request computes this block too: the first noted stays */
    *e = (shared_key_t){.key = key, .slot = sched_slot(s, q), .epoch = s->shared_epoch};
}

/* Whether q's blocks [j, j + share_blocks) hold what o's do: the same
 * parent under the same salt and adapter (the index keys of block j - 1),
 * the same tokens, and where either request has multimodal items (whose
 * content the tokens do not show), the same content hash at the last. */
static bool share_next_blocks(const kvrt_sched_t *s, seq_t *q, seq_t *o, uint32_t j)
{
    const uint32_t tpb = s->tokens_per_block, last = j + s->share_blocks - 1;
    const size_t from = (size_t)j * tpb, end = (size_t)(last + 1) * tpb;
    const int32_t *a = sched_seq_tokens(q, (uint32_t)end);
    const int32_t *b = sched_seq_tokens(o, (uint32_t)end);
    if (memcmp(a + from, b + from, (end - from) * sizeof(int32_t)) != 0)
        return false;
    const kvrt_hash_keys_t *qk = sched_seq_keys(q), *ok = sched_seq_keys(o);
    kvrt_block_hash_t pq, po, kq, ko;
    parent_of(s, q, j, &pq);
    parent_of(s, o, j, &po);
    if (kvrt_block_key(&pq, qk, &kq) != KVRT_OK || kvrt_block_key(&po, ok, &ko) != KVRT_OK ||
        !same_hash(&kq, &ko))
        return false;
    if ((!qk || !qk->num_mm_items) && (!ok || !ok->num_mm_items))
        return true;
    content_of(s, q, last, &pq);
    content_of(s, o, last, &po);
    return same_hash(&pq, &po);
}

bool sched_shared_wait_slow(kvrt_sched_t *s, seq_t *q, uint32_t offered)
{
    if ((q->cache_flags & KVRT_SEQ_CACHE_SKIP_READ) || q->landed || q->arrival != SCHED_NONE)
        return false;
    const uint32_t j = q->computed >> s->block_shift;
    if (((uint64_t)j + s->share_blocks) * s->tokens_per_block > offered)
        return false; /* the blocks it would wait for are not all offered to the cache */
    kvrt_block_hash_t key;
    key_of(s, q, j, &key);
    const shared_key_t *e = probe(s, &key);
    if (e->epoch != s->shared_epoch)
        return false;
    seq_t *o = &s->seqs[e->slot];
    /* Still computing it: a request noted earlier in this step may have
     * been preempted since (admissions preempt nobody, but a running
     * request's growth may have, before the admissions). */
    if (o == q || o->state != KVRT_SEQ_RUNNING || !o->in_prefill ||
        (o->computed >> s->block_shift) != j || !share_next_blocks(s, q, o, j))
        return false;
    kvrt_cache_forget_query(s->cache, offered, &s->admit_match);
    sched_release(s, q);
    sched_heap_remove(s, q);
    s->share_waiting[s->num_share_waiting++] = sched_slot(s, q);
    s->stats.shared_prefill_waits++;
    return true;
}

void sched_shared_requeue(kvrt_sched_t *s)
{
    for (uint32_t i = 0; i < s->num_share_waiting; i++)
        sched_heap_push(s, &s->seqs[s->share_waiting[i]]);
    s->num_share_waiting = 0;
}
