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
 *   - every prefilling running request notes, once a step, the block at
 *     its committed length j (the first of its blocks not yet cached:
 *     blocks before it were cached at the commits that filled them), when
 *     it writes to the cache and has share_blocks full blocks from there
 *     (hybrid: the length rounded down to a hit's unit, hit_block());
 *   - a request coming up for admission is matched as usual; when the
 *     block after its hits is such a j, and its blocks [j, j +
 *     share_blocks) are the noting request's (the same index key at the
 *     last: the content chain covers every token and multimodal item
 *     before it, the key the salt and adapter), it gives its hits back,
 *     leaves the heap for the rest of the step and takes its place again
 *     after admission (sched_shared_requeue);
 *   - it remembers whom it waits for and how many blocks their prompts
 *     share from the start, so that the next steps put it off again
 *     without matching or hashing it (a 32K-token prompt would otherwise
 *     be hashed every step) while that request has share_blocks or more
 *     of them left to commit (in whole hit units: what a hit can use) and
 *     has not gone back below where it was last seen (preempted, then
 *     readmitted with fewer hits, or none when it skips reading the
 *     cache); then it is matched, past the blocks committed meanwhile, and
 *     waits again only for another run.
 *
 * A request waits only while another computes its next blocks, so each
 * wait is bounded by that request's progress: when it ends, is preempted
 * or stops writing to the cache (a reset), nothing is noted for it and the
 * waiting request is matched.
 * The cache counts one query per admission: a waiting request's match is
 * taken back (kvrt_cache_forget_query), and the scheduler's own counts are
 * made at admission only.
 *
 * Hybrid schedulers (several cache groups, sliding windows) note and
 * compare group 0's blocks: every group's blocks hold the same tokens and
 * keys chain over all of them, so requests that share group 0's blocks
 * share every group's. A hit there is a multiple of the largest block size
 * (hit_unit), which may span several of group 0's blocks, so a request
 * notes the block where the hit of a request sharing its prompt would end:
 * its committed length rounded down to hit_unit. When the blocks are
 * committed, the waiting request's match counts what every group serves
 * (groups.c); when it waits, its queries are taken back in every cache
 * that counted one (a cache whose groups all look blocks up counts one
 * too: groups.c, count_lookups).
 *
 * The noted blocks live in an open-addressing table, valid for the step
 * whose epoch they carry (nothing is cleared per step), at most half full:
 * a step notes at most half its slots (at least max_seqs). An entry's key
 * is cheap (the hash of everything before the block, which the request
 * knows, mixed with the block's first four tokens); the key that decides,
 * of the last block of the run, may take share_blocks hashes, so it is
 * computed only when a request coming up meets the entry, once per entry
 * and step (the hashes are kept in the request's array: the commit that
 * fills those blocks, or a later match, finds them hashed). Two prompts
 * that share a template block both stay in the table (entries with equal
 * cheap keys are all visited).
 */
#include "sched_internal.h"

bool sched_shared_alloc(kvrt_sched_t *s)
{
    if (!s->share_blocks || !s->cache) {
        s->share_blocks = 0;
        return true;
    }
    uint32_t capacity = 4;
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

/* The block (group 0's) where a hit of the first `computed` tokens ends:
 * with several block sizes a hit is a multiple of the largest, hit_unit
 * (a power of two, group 0's block size with one group). */
static inline uint32_t hit_block(const kvrt_sched_t *s, uint32_t computed)
{
    return sched_round_down(computed, s->hit_unit) >> s->block_shift;
}

/* The content hash of q's full block j (hashed once: the commit that fills
 * it finds it hashed). */
static const kvrt_block_hash_t *content_of(kvrt_sched_t *s, seq_t *q, uint32_t j)
{
    sched_hash_blocks(s, q, j + 1);
    return &q->hashes[j];
}

/* The cheap key of q's block j: the hash of everything before it (known
 * for a request's hits and its committed blocks) mixed with its first
 * four tokens. Equal for requests that may share the block. */
static void near_key(kvrt_sched_t *s, seq_t *q, uint32_t j, kvrt_block_hash_t *key)
{
    const uint32_t tpb = s->tokens_per_block;
    const int32_t *t = sched_seq_tokens(q, (j + 1) * tpb) + (size_t)j * tpb;
    uint64_t head = (uint32_t)t[0];
    if (tpb >= 4)
        head ^= (uint64_t)(uint32_t)t[1] << 32 ^ (uint64_t)(uint32_t)t[2] * 0x9E3779B97F4A7C15ull ^
                (uint64_t)(uint32_t)t[3] << 17;
    *key = j ? *content_of(s, q, j - 1) : s->root;
    key->lo ^= head * 0xC2B2AE3D27D4EB4Full;
}

/* The key that decides: the index key of q's block j + share_blocks - 1
 * (its content chain and q's salt and adapter). */
static void run_key(kvrt_sched_t *s, seq_t *q, uint32_t j, kvrt_block_hash_t *key)
{
    kvrt_block_key(content_of(s, q, j + s->share_blocks - 1), sched_seq_keys(q), key);
}

void sched_shared_note_slow(kvrt_sched_t *s, seq_t *q)
{
    if (q->cache_flags & SCHED_CACHE_NO_WRITE)
        return;
    const uint32_t j = hit_block(s, q->computed);
    if (((uint64_t)j + s->share_blocks) * s->tokens_per_block > q->num_tokens)
        return; /* fewer than share_blocks full blocks left to share */
    if (s->shared_step != s->step_count) { /* the step's first note */
        s->shared_step = s->step_count;
        s->shared_notes = 0;
        if (++s->shared_epoch == 0) { /* wrapped: old epochs could come back */
            memset(s->shared, 0, (size_t)(s->shared_mask + 1) * sizeof(*s->shared));
            s->shared_epoch = 1;
        }
    }
    if (s->shared_notes == (s->shared_mask + 1) / 2)
        return; /* half full: probe runs stay short */
    kvrt_block_hash_t key;
    near_key(s, q, j, &key);
    uint32_t i = (uint32_t)key.lo & s->shared_mask;
    while (s->shared[i].epoch == s->shared_epoch)
        i = (i + 1) & s->shared_mask;
    s->shared[i] = (shared_key_t){
        .near = key, .slot = sched_slot(s, q), .block = j, .epoch = s->shared_epoch};
    s->shared_notes++;
}

/* o, noted at block j, still computes it: a request noted earlier in the
 * step may have been preempted since by a later one's growth. */
static bool computes(const kvrt_sched_t *s, const seq_t *o, uint32_t j)
{
    return o->state == KVRT_SEQ_RUNNING && o->in_prefill && hit_block(s, o->computed) == j;
}

/* The request noted at q's block j whose next share_blocks blocks are q's,
 * or NULL. */
static seq_t *find_sharer(kvrt_sched_t *s, seq_t *q, uint32_t j)
{
    kvrt_block_hash_t near, mine;
    near_key(s, q, j, &near);
    bool mine_known = false;
    for (uint32_t i = (uint32_t)near.lo & s->shared_mask; s->shared[i].epoch == s->shared_epoch;
         i = (i + 1) & s->shared_mask) {
        shared_key_t *e = &s->shared[i];
        seq_t *o = &s->seqs[e->slot];
        if (!kvrt_block_hash_equal(&e->near, &near) || e->block != j || o == q ||
            !computes(s, o, j))
            continue;
        if (!mine_known) {
            run_key(s, q, j, &mine);
            mine_known = true;
        }
        if (!e->run_known) {
            run_key(s, o, j, &e->run);
            e->run_known = true;
        }
        if (kvrt_block_hash_equal(&e->run, &mine))
            return o;
    }
    return NULL;
}

/* How many full blocks q and o share from the start, given that they share
 * [0, from): more are counted by their tokens, unless either has
 * multimodal items (whose content the tokens do not show). At most what q
 * offers the cache and what o will compute. */
static uint32_t shared_run_end(const kvrt_sched_t *s, seq_t *q, seq_t *o, uint32_t from,
                               uint32_t offered)
{
    const kvrt_hash_keys_t *qk = sched_seq_keys(q), *ok = sched_seq_keys(o);
    if ((qk && qk->num_mm_items) || (ok && ok->num_mm_items))
        return from;
    const uint32_t tpb = s->tokens_per_block;
    uint32_t limit = offered / tpb < o->num_tokens / tpb ? offered / tpb : o->num_tokens / tpb;
    const int32_t *a = sched_seq_tokens(q, limit * tpb), *b = sched_seq_tokens(o, limit * tpb);
    uint32_t end = from;
    while (end < limit &&
           memcmp(a + (size_t)end * tpb, b + (size_t)end * tpb, tpb * sizeof(int32_t)) == 0)
        end++;
    return end;
}

/* q leaves the heap until sched_shared_requeue; one wait counted. */
static void put_off(kvrt_sched_t *s, seq_t *q)
{
    sched_heap_remove(s, q);
    s->share_waiting[s->num_share_waiting++] = sched_slot(s, q);
    s->stats.shared_prefill_waits++;
}

bool sched_shared_still_waits_slow(kvrt_sched_t *s, seq_t *q)
{
    seq_t *o = &s->seqs[q->share_slot];
    const uint32_t at = hit_block(s, o->computed);
    /* A request that drops its last hit comes back from a preemption a
     * hit unit below what it had cached: that alone ends no wait. */
    const uint32_t dropped =
        (o->cache_flags & KVRT_SEQ_CACHE_DROP_LAST_HIT) ? s->hit_unit >> s->block_shift : 0;
    /* o may have stopped writing to the cache since (a reset made its K/V
     * stale): then nothing it computes will be a hit. Or it went back
     * below where q last saw it: preempted, then readmitted with fewer
     * hits (its blocks evicted meanwhile, or it skips reading the cache,
     * and then what it computes again stays its own): q is matched, and
     * waits again if o computes q's next blocks. */
    if (sched_id(s, o) == q->share_id && o->state == KVRT_SEQ_RUNNING && o->in_prefill &&
        !(o->cache_flags & SCHED_CACHE_NO_WRITE) && at + dropped >= q->share_from &&
        at + s->share_blocks <= q->share_end) {
        q->share_from = at;
        put_off(s, q);
        return true;
    }
    q->share_id = 0; /* matched now, past what o committed */
    return false;
}

/* The request noted at q's block j that computes q's next share_blocks
 * blocks (all offered to the cache) or more, with *end_out the block (a
 * whole hit unit) where what they share ends; NULL if none. */
static seq_t *sharer_at(kvrt_sched_t *s, seq_t *q, uint32_t j, uint32_t offered,
                        uint32_t *end_out)
{
    if (((uint64_t)j + s->share_blocks) * s->tokens_per_block > offered)
        return NULL; /* the blocks it would wait for are not all offered to the cache */
    seq_t *o = find_sharer(s, q, j);
    if (!o)
        return NULL;
    /* What a hit can use of the run they share: whole hit units (on one
     * group, every block). */
    *end_out =
        hit_block(s, shared_run_end(s, q, o, j + s->share_blocks, offered) << s->block_shift);
    return j + s->share_blocks <= *end_out ? o : NULL;
}

bool sched_shared_wait_slow(kvrt_sched_t *s, seq_t *q, uint32_t offered)
{
    /* (A request holding arrived K/V or waiting for it has a table: it is
     * never matched, so it never comes here.) */
    if (q->cache_flags & KVRT_SEQ_CACHE_SKIP_READ)
        return false;
    uint32_t j = q->computed >> s->block_shift, end;
    seq_t *o = sharer_at(s, q, j, offered, &end);
    if (!o && (q->cache_flags & KVRT_SEQ_CACHE_DROP_LAST_HIT)) {
        /* It recomputes the hit unit it dropped, and another request
         * that committed those blocks notes the unit after them. */
        j += s->hit_unit >> s->block_shift;
        o = sharer_at(s, q, j, offered, &end);
    }
    if (!o)
        return false;
    q->share_slot = sched_slot(s, o);
    q->share_id = sched_id(s, o);
    q->share_from = j;
    q->share_end = end;
    for (uint32_t g = 0; g < s->num_groups; g++)
        if (!s->groups[g].lookup || s->groups[g].counts_lookups)
            kvrt_cache_forget_query(s->groups[g].cache, offered, &s->groups[g].admit_match);
    sched_release(s, q);
    put_off(s, q);
    return true;
}

void sched_shared_requeue(kvrt_sched_t *s)
{
    uint64_t tokens = 0;
    for (uint32_t i = 0; i < s->num_share_waiting; i++) {
        seq_t *q = &s->seqs[s->share_waiting[i]];
        sched_heap_push(s, q);
        tokens += q->num_tokens;
    }
    s->num_share_waiting = 0;
    s->share_waited_tokens = tokens;
}
