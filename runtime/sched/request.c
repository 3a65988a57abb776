/*
 * request.c - a request's life outside the step: add (copy everything,
 * size every per-request array once), abort at any point, info, drafts set
 * by the engine, end events and draining; and the waiting queue, a binary
 * heap ordered by priority, then deadline (EDF), then arrival (FCFS).
 */
#include <stdlib.h>
#include <string.h>

#include "sched_internal.h"

/* Alignment of a request's token array within its allocation (whose
 * start is 16-byte aligned). */
#define TOKENS_ALIGN 64u

/* ---- the waiting heap ------------------------------------------------------ */

/* True when a runs before b. */
static inline bool heap_before(const heap_entry_t *a, const heap_entry_t *b)
{
    if (a->priority != b->priority)
        return a->priority > b->priority;
    if (a->deadline != b->deadline)
        return a->deadline < b->deadline; /* no deadline is UINT64_MAX: last */
    return a->order < b->order;
}

static inline void heap_set(kvrt_sched_t *s, uint32_t pos, heap_entry_t e)
{
    s->heap[pos] = e;
    s->seqs[e.index].heap_pos = pos;
}

static void heap_sift_up(kvrt_sched_t *s, uint32_t pos)
{
    heap_entry_t e = s->heap[pos];
    while (pos > 0) {
        uint32_t parent = (pos - 1) / 2;
        if (!heap_before(&e, &s->heap[parent]))
            break;
        heap_set(s, pos, s->heap[parent]);
        pos = parent;
    }
    heap_set(s, pos, e);
}

static void heap_sift_down(kvrt_sched_t *s, uint32_t pos)
{
    heap_entry_t e = s->heap[pos];
    for (;;) {
        uint32_t child = 2 * pos + 1;
        if (child >= s->heap_size)
            break;
        if (child + 1 < s->heap_size && heap_before(&s->heap[child + 1], &s->heap[child]))
            child++;
        if (!heap_before(&s->heap[child], &e))
            break;
        heap_set(s, pos, s->heap[child]);
        pos = child;
    }
    heap_set(s, pos, e);
}

void sched_heap_push(kvrt_sched_t *s, seq_t *q)
{
    heap_entry_t e = {.priority = q->priority,
                      .index = sched_slot(s, q),
                      .deadline = q->deadline_ns,
                      .order = q->order};
    s->heap[s->heap_size++] = e;
    heap_sift_up(s, s->heap_size - 1);
    s->waiting_tokens += q->num_tokens;
}

void sched_heap_remove(kvrt_sched_t *s, seq_t *q)
{
    uint32_t pos = q->heap_pos;
    q->heap_pos = SCHED_NONE;
    s->waiting_tokens -= q->num_tokens;
    s->heap_size--;
    if (pos == s->heap_size)
        return;
    heap_entry_t moved = s->heap[s->heap_size];
    heap_set(s, pos, moved);
    heap_sift_up(s, pos);
    heap_sift_down(s, s->seqs[moved.index].heap_pos);
}

/* ---- release and end ------------------------------------------------------ */

void sched_release(kvrt_sched_t *s, seq_t *q)
{
    if (s->pinned == sched_slot(s, q))
        s->pinned = SCHED_NONE;
    if (q->arrival != SCHED_NONE)
        sched_abandon_arrival(s, q); /* its blocks may still be written */
    sched_unland(s, q);
    if (KVRT_UNLIKELY(s->hybrid)) {
        sched_groups_release(s, q);
    } else if (q->table) {
        /* The table gives its blocks back deepest first, so the prefix
         * cache sees a request's last blocks go idle first: under LRU its
         * deep blocks are evicted before its root and a recomputation
         * still finds the shared prefix. */
        kvrt_table_destroy(s->pool, q->table);
        q->table = 0;
    }
    sched_row_release(s, q);
    if (q->running_pos != SCHED_NONE) {
        s->running[q->running_pos] = SCHED_NONE; /* the step skips it */
        q->running_pos = SCHED_NONE;
        s->running_live--;
        if (q->in_prefill)
            s->running_prefill--;
        s->running_holes++;
    }
    q->computed = 0;
    q->ahead = 0;
    q->pending_samples = 0;
    q->pending_spec = 0;
    q->lag = 0;
    q->num_inserted = 0;
    q->match_tokens = 0;
    q->cache_flags &= (uint8_t)~SCHED_CACHE_STALE; /* it recomputes from here */
}

void sched_end(kvrt_sched_t *s, seq_t *q, kvrt_seq_end_reason_t reason,
               kvrt_status_t status)
{
    if (q->heap_pos != SCHED_NONE)
        sched_heap_remove(s, q);
    if (q->in_plan) {
        q->release_at_commit = 1; /* the engine may still write its blocks */
        if (q->running_pos != SCHED_NONE)
            s->running_ended++; /* it keeps its running place until then */
    } else
        sched_release(s, q);
    q->state = KVRT_SEQ_ENDED;
    q->end_reason = (uint8_t)reason;
    q->status = status;
    q->end_ns = s->plan->now_ns;
    q->engine_drafts = 0;
    switch (reason) {
    case KVRT_END_LENGTH:
        s->stats.finished_length++;
        break;
    case KVRT_END_STOP:
        s->stats.finished_stop++;
        break;
    case KVRT_END_ABORTED:
        s->stats.aborted++;
        break;
    default:
        s->stats.failed++;
        break;
    }
    s->ended[(s->ended_head + s->ended_count) % s->max_requests] = sched_slot(s, q);
    s->ended_count++;
}

/* ---- add ------------------------------------------------------------------- */

static kvrt_status_t check_seq_params(kvrt_sched_t *s, const kvrt_seq_params_t *p)
{
    const uint64_t known = KVRT_SEQ_PARAM_STOP | KVRT_SEQ_PARAM_PRIORITY |
                           KVRT_SEQ_PARAM_DEADLINE | KVRT_SEQ_PARAM_KEYS |
                           KVRT_SEQ_PARAM_USER_TAG | KVRT_SEQ_PARAM_CACHE_FLAGS |
                           KVRT_SEQ_PARAM_MIN_TOKENS;
    const uint32_t known_cache = KVRT_SEQ_CACHE_SKIP_READ | KVRT_SEQ_CACHE_SKIP_WRITE |
                                 KVRT_SEQ_CACHE_DROP_LAST_HIT;
    if (p->field_mask & ~known)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(p->field_mask & ~known));
    if (!p->prompt || p->prompt_len == 0 || p->max_new_tokens == 0)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "a prompt of at least 1 token and max_new_tokens >= 1 are required");
    if ((uint64_t)p->prompt_len + 1 > s->max_seq_tokens)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "prompt of %u tokens leaves no room for output under "
                         "max_seq_tokens %u",
                         p->prompt_len, s->max_seq_tokens);
    for (uint32_t i = 0; i < p->prompt_len; i++)
        if (p->prompt[i] < 0)
            return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "prompt token %u is negative (%d)",
                             i, p->prompt[i]);
    if (p->field_mask & KVRT_SEQ_PARAM_STOP) {
        if (p->num_stop_tokens > KVRT_SEQ_MAX_STOP_TOKENS ||
            (p->num_stop_tokens && !p->stop_tokens))
            return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                             "%u stop tokens (at most %u, and stop_tokens non-NULL)",
                             p->num_stop_tokens, KVRT_SEQ_MAX_STOP_TOKENS);
    }
    if ((p->field_mask & KVRT_SEQ_PARAM_CACHE_FLAGS) && (p->cache_flags & ~known_cache))
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "unknown cache_flags bits 0x%x",
                         p->cache_flags & ~known_cache);
    if ((p->field_mask & KVRT_SEQ_PARAM_MIN_TOKENS) && p->min_tokens > p->max_new_tokens)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "min_tokens %u above max_new_tokens %u",
                         p->min_tokens, p->max_new_tokens);
    if (p->field_mask & KVRT_SEQ_PARAM_KEYS) {
        const kvrt_hash_keys_t *keys = p->keys;
        /* The cache's own validation, on an empty block key. */
        kvrt_block_hash_t zero = {0, 0}, key;
        if (!keys || kvrt_block_key(&zero, keys, &key) != KVRT_OK)
            return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                             "bad keys: NULL, unknown bits, or salt of 0 or more than %u "
                             "bytes",
                             KVRT_CACHE_SALT_MAX);
        if ((keys->field_mask & KVRT_HASH_KEY_MM) && keys->num_mm_items && !keys->mm_items)
            return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "mm_items is NULL");
        if (keys->field_mask & KVRT_HASH_KEY_MM) {
            const kvrt_mm_item_t *mm = keys->mm_items;
            for (uint32_t i = 0; i < keys->num_mm_items; i++) {
                if (mm[i].length == 0 ||
                    (i && mm[i].offset < mm[i - 1].offset + mm[i - 1].length))
                    return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                                     "multimodal item %u empty, unsorted or overlapping", i);
                if ((uint64_t)mm[i].offset + mm[i].length > p->prompt_len)
                    return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                                     "multimodal item %u [%u, %llu) ends past the prompt of "
                                     "%u tokens",
                                     i, mm[i].offset,
                                     (unsigned long long)mm[i].offset + mm[i].length,
                                     p->prompt_len);
                if (mm[i].length > s->max_batch_tokens)
                    return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                                     "multimodal item %u of %u tokens is longer than "
                                     "max_batch_tokens (%u): it could never run whole",
                                     i, mm[i].length, s->max_batch_tokens);
            }
        }
    }
    return KVRT_OK;
}

/* The shared stop set equal to tokens[0, n): 1 + its index. When none is,
 * 1 + the index a new one would take (*fresh: the caller fills it in once
 * the request is added), or 0 when SCHED_STOP_SETS are taken. */
static uint32_t stop_set_for(const kvrt_sched_t *s, const int32_t *tokens, uint32_t n,
                             bool *fresh)
{
    *fresh = false;
    for (uint32_t k = 0; k < s->num_stop_sets; k++)
        if (s->stop_sets[k].num == n &&
            memcmp(s->stop_sets[k].tokens, tokens, (size_t)n * sizeof(int32_t)) == 0)
            return k + 1;
    if (s->num_stop_sets == SCHED_STOP_SETS)
        return 0;
    *fresh = true;
    return s->num_stop_sets + 1;
}

KVRT_EXPORT kvrt_status_t kvrt_seq_add(kvrt_sched_t *s, const kvrt_seq_params_t *p,
                                       kvrt_seq_id_t *id_out)
{
    if (!s)
        return KVRT_ERR_INVALID_ARG;
    if (!p || !id_out)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "params and id_out are required");
    kvrt_status_t status = check_seq_params(s, p);
    if (status != KVRT_OK)
        return status;
    uint64_t limit = (uint64_t)p->prompt_len + p->max_new_tokens;
    uint32_t capacity = limit > s->max_seq_tokens ? s->max_seq_tokens : (uint32_t)limit;
    const kvrt_hash_keys_t *keys = (p->field_mask & KVRT_SEQ_PARAM_KEYS) ? p->keys : NULL;
    uint32_t num_mm = keys && (keys->field_mask & KVRT_HASH_KEY_MM) ? keys->num_mm_items : 0;
    uint32_t longest_item = 0;
    for (uint32_t k = 0; k < num_mm; k++) /* (checked by check_seq_params) */
        if (keys->mm_items[k].length > longest_item)
            longest_item = keys->mm_items[k].length;
    /* The most blocks it can ever hold: every token but the last has K/V
     * (a step's drafts are clamped to the tokens the request may still
     * produce). */
    for (uint32_t g = 0; g < s->num_groups; g++) {
        if (s->groups[g].owner != g)
            continue; /* counted with the group that owns its pool */
        /* (a window group: its window's) */
        uint64_t worst = sched_group_worst_blocks(s, g, capacity, longest_item);
        for (uint32_t h = g + 1; h < s->num_groups; h++)
            if (s->groups[h].owner == g)
                worst += sched_group_worst_blocks(s, h, capacity, longest_item);
        kvrt_pool_info_t info;
        kvrt_pool_info(s->groups[g].pool, &info);
        uint32_t reserve = s->use_watermark ? info.watermark_blocks : 0;
        if (worst + reserve > info.num_blocks - 1)
            return kvrt_fail(s->ctx, KVRT_ERR_NO_BLOCKS,
                             "a request of up to %u tokens needs %llu blocks (+%u watermark) "
                             "in group %u's pool; it has %u",
                             capacity, (unsigned long long)worst, reserve, g,
                             info.num_blocks - 1);
    }
    if (s->free_head == SCHED_NONE)
        return kvrt_fail(s->ctx, KVRT_ERR_REQUEST_LIMIT, "all %u request slots are in use",
                         s->max_requests);

    uint32_t num_stop = (p->field_mask & KVRT_SEQ_PARAM_STOP) ? p->num_stop_tokens : 0;
    uint32_t max_blocks = s->cache ? capacity >> s->block_shift : 0;
    const uint32_t min_tokens =
        (p->field_mask & KVRT_SEQ_PARAM_MIN_TOKENS) ? p->min_tokens : 0;
    /* Without min_tokens a stop counts from the first output, so the
     * request needs nothing of its own to check its stop set: a shared
     * set serves. */
    bool fresh_set = false;
    const uint32_t stop_set =
        num_stop && !min_tokens ? stop_set_for(s, p->stop_tokens, num_stop, &fresh_set) : 0;
    /* One allocation: hashes (16-byte aligned) first, then tokens (64-byte
     * aligned, so that a block of 16 tokens is one line of the array, and
     * with room for the line of recent tokens: sched_token_room), the stop
     * area (sched_stop_area), mm items, the n-gram index. */
    size_t stop_area =
        num_stop && !stop_set ? sizeof(stop_area_t) + num_stop * sizeof(int32_t) : 0;
    size_t group_hashes = sched_groups_hash_bytes(s, capacity);
    size_t bytes = (size_t)max_blocks * sizeof(kvrt_block_hash_t) + group_hashes +
                   (size_t)sched_token_room(capacity) * sizeof(int32_t) + stop_area +
                   (size_t)num_mm * sizeof(kvrt_mm_item_t) + 8 + ngram_bytes(s, capacity) +
                   TOKENS_ALIGN - 16;
    char *mem = kvrt_arena_alloc(&s->arena, bytes);
    if (!mem)
        return kvrt_fail(s->ctx, KVRT_ERR_NO_MEMORY, "request of %u tokens", capacity);

    uint32_t index = s->free_head;
    seq_t *q = &s->seqs[index];
    s->free_head = q->next_free;
    uint32_t generation = sched_next_generation(q->generation);
    memset(q, 0, sizeof(*q));
    q->generation = generation;
    q->allocation = mem;
    q->hashes = (kvrt_block_hash_t *)mem;
    sched_groups_init_seq(s, q, mem + (size_t)max_blocks * sizeof(kvrt_block_hash_t), capacity);
    uintptr_t tokens_at =
        (uintptr_t)(mem + (size_t)max_blocks * sizeof(kvrt_block_hash_t) + group_hashes);
    q->token_array =
        (int32_t *)((tokens_at + TOKENS_ALIGN - 1) & ~(uintptr_t)(TOKENS_ALIGN - 1));
    memcpy(q->token_array, p->prompt, (size_t)p->prompt_len * sizeof(int32_t));
    const uint32_t line = p->prompt_len & ~(SCHED_RECENT - 1);
    memcpy(q->recent, p->prompt + line, (p->prompt_len - line) * sizeof(int32_t));
    char *tail = (char *)(q->token_array + sched_token_room(capacity)) + stop_area;
    tail += (8 - ((uintptr_t)tail & 7)) & 7;
    if (keys) {
        q->keys.field_mask = keys->field_mask;
        q->keys.adapter_id = keys->adapter_id;
        if (keys->field_mask & KVRT_HASH_KEY_SALT) {
            memcpy(q->salt, keys->salt, keys->salt_bytes);
            q->keys.salt = q->salt;
            q->keys.salt_bytes = keys->salt_bytes;
        }
        if (num_mm) {
            memcpy(tail, keys->mm_items, (size_t)num_mm * sizeof(kvrt_mm_item_t));
            q->keys.mm_items = (const kvrt_mm_item_t *)tail;
            q->keys.num_mm_items = num_mm;
        }
    }
    tail += (size_t)num_mm * sizeof(kvrt_mm_item_t);
    if (s->ngram_min)
        ngram_init(&q->ngram, tail, capacity);

    q->state = KVRT_SEQ_WAITING;
    q->num_tokens = p->prompt_len;
    q->last_token = p->prompt[p->prompt_len - 1];
    q->prompt_len = p->prompt_len;
    q->max_tokens = capacity;
    q->num_stop = (uint8_t)num_stop;
    q->stop_set = (uint8_t)stop_set;
    if (fresh_set) {
        sched_stop_set_t *set = &s->stop_sets[s->num_stop_sets++];
        set->num = num_stop;
        memcpy(set->tokens, p->stop_tokens, (size_t)num_stop * sizeof(int32_t));
    } else if (num_stop && !stop_set) {
        stop_area_t *area = sched_stop_area(q);
        uint64_t from = (uint64_t)p->prompt_len + 1 + min_tokens;
        area->from = from < UINT32_MAX ? (uint32_t)from : UINT32_MAX;
        memcpy(area->tokens, p->stop_tokens, (size_t)num_stop * sizeof(int32_t));
    }
    q->row = SCHED_NONE;
    q->running_pos = SCHED_NONE;
    q->heap_pos = SCHED_NONE;
    q->arrival = SCHED_NONE;
    q->priority = (p->field_mask & KVRT_SEQ_PARAM_PRIORITY) ? p->priority : 0;
    q->deadline_ns = (p->field_mask & KVRT_SEQ_PARAM_DEADLINE) ? p->deadline_ns : UINT64_MAX;
    q->user_tag = (p->field_mask & KVRT_SEQ_PARAM_USER_TAG) ? p->user_tag : 0;
    q->cache_flags = (p->field_mask & KVRT_SEQ_PARAM_CACHE_FLAGS) ? (uint8_t)p->cache_flags : 0;
    if (q->keys.field_mask == 0)
        q->cache_flags |= SCHED_CACHE_NO_KEYS;
    q->order = s->next_order++;
    q->draft_len = (uint8_t)s->max_draft;
    q->accept_hits = q->accept_tries = SCHED_ACCEPT_ONE; /* optimistic: full length */
    q->status = KVRT_OK;
    s->live++;
    sched_heap_push(s, q);
    s->stats.added++;
    *id_out = sched_make_id(index, generation);
    return KVRT_OK;
}

#define unknown_request(s, id)                                                   \
    kvrt_fail((s)->ctx, KVRT_ERR_UNKNOWN_REQUEST,                                \
              "request 0x%llx is unknown or already drained", (unsigned long long)(id))

KVRT_EXPORT kvrt_status_t kvrt_seq_abort(kvrt_sched_t *s, kvrt_seq_id_t id)
{
    if (!s)
        return KVRT_ERR_INVALID_ARG;
    seq_t *q = sched_lookup(s, id);
    if (!q)
        return unknown_request(s, id);
    if (q->state == KVRT_SEQ_ENDED)
        return KVRT_OK;
    sched_end(s, q, KVRT_END_ABORTED, KVRT_ERR_CANCELED);
    return KVRT_OK;
}

/* Checks one draft entry; returns its request (NULL and a status on error). */
static seq_t *check_draft(kvrt_sched_t *s, kvrt_seq_id_t id, const int32_t *tokens,
                          uint32_t count, kvrt_status_t *status)
{
    seq_t *q = sched_lookup(s, id);
    if (KVRT_UNLIKELY(!q)) {
        *status = unknown_request(s, id);
        return NULL;
    }
    if (KVRT_UNLIKELY(count > s->max_draft || (count && !tokens))) {
        *status = kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                            "%u draft tokens (at most %u, and tokens non-NULL)", count,
                            s->max_draft);
        return NULL;
    }
    if (KVRT_UNLIKELY(q->state != KVRT_SEQ_RUNNING || q->in_prefill)) {
        *status = kvrt_fail(s->ctx, KVRT_ERR_BAD_STATE,
                            "request 0x%llx is not decoding (state %d)",
                            (unsigned long long)id, (int)q->state);
        return NULL;
    }
    int32_t any = 0; /* the sign bit of any token: one test for all */
    for (uint32_t i = 0; i < count; i++)
        any |= tokens[i];
    if (KVRT_UNLIKELY(any < 0)) {
        uint32_t i = 0;
        while (tokens[i] >= 0)
            i++;
        *status = kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "draft token %u is negative", i);
        return NULL;
    }
    return q;
}

static inline void store_draft(seq_t *q, const int32_t *tokens, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++) /* a few tokens: no memcpy call */
        q->draft[i] = tokens[i];
    q->engine_drafts = (uint8_t)count;
}

KVRT_EXPORT kvrt_status_t kvrt_seq_set_draft(kvrt_sched_t *s, kvrt_seq_id_t id,
                                             const int32_t *tokens, uint32_t count)
{
    if (!s)
        return KVRT_ERR_INVALID_ARG;
    if (s->max_draft == 0)
        return kvrt_fail(s->ctx, KVRT_ERR_UNSUPPORTED,
                         "speculation is off (max_draft_tokens 0)");
    kvrt_status_t status = KVRT_OK;
    seq_t *q = check_draft(s, id, tokens, count, &status);
    if (!q)
        return status;
    store_draft(q, tokens, count);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_sched_set_drafts(kvrt_sched_t *s, uint32_t num_seqs,
                                                const kvrt_seq_id_t *ids,
                                                const uint32_t *counts, const int32_t *tokens)
{
    if (KVRT_UNLIKELY(!s))
        return KVRT_ERR_INVALID_ARG;
    if (KVRT_UNLIKELY(s->max_draft == 0))
        return kvrt_fail(s->ctx, KVRT_ERR_UNSUPPORTED,
                         "speculation is off (max_draft_tokens 0)");
    if (KVRT_UNLIKELY(num_seqs && (!ids || !counts)))
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "ids and counts are required");
    /* One pass checks every entry and gives a request its drafts when
     * its previous ones were consumed (count 0); the rest (drafts not yet
     * consumed, or an id given twice) wait for a second pass, which runs
     * only when there are any: most steps the engine sets each request's
     * drafts once, and a second walk over tens of thousands of requests
     * would fetch each one's line again. A call refused midway takes back
     * the counts it gave (drafts_published), which were 0 before it; what
     * those requests' draft lines now hold no one reads at count 0. A
     * failing entry is checked again by check_draft for its message. */
    uint32_t *const published = s->drafts_published;
    uint32_t num_published = 0, waiting = 0, failed = num_seqs;
    kvrt_status_t status = KVRT_OK;
    uint64_t total = 0;
    for (uint32_t i = 0; i < num_seqs; i++) {
        if (i + SCHED_PREFETCH < num_seqs) {
            uint32_t ahead = (uint32_t)ids[i + SCHED_PREFETCH] - 1;
            if (ahead < s->max_requests) { /* its first line, and its drafts' */
                __builtin_prefetch(&s->seqs[ahead], 1);
                __builtin_prefetch(s->seqs[ahead].draft, 1);
            }
        }
        seq_t *q = sched_lookup(s, ids[i]);
        const uint32_t n = counts[i];
        if (KVRT_UNLIKELY(!q || n > s->max_draft || (n && !tokens) ||
                          q->state != KVRT_SEQ_RUNNING || q->in_prefill)) {
            check_draft(s, ids[i], tokens + total, n, &status);
            failed = i;
            break;
        }
        if (KVRT_LIKELY(!q->engine_drafts && num_published < s->max_seqs)) {
            if (n) { /* (a count of 0 changes nothing: none to take back) */
                sched_copy32(q->draft, KVRT_SCHED_MAX_DRAFT, tokens + total, n, n);
                q->engine_drafts = (uint8_t)n;
                published[num_published++] = sched_slot(s, q);
            }
        } else {
            waiting++;
        }
        total += n;
    }
    /* The entries before `failed` passed every check but their tokens':
     * the first of them with a negative draft is the first bad entry. */
    uint32_t scan = failed;
    if (KVRT_LIKELY(failed == num_seqs)) {
        /* The tokens, all in one loop over their concatenation. */
        int32_t any = 0;
        for (uint64_t k = 0; k < total; k++)
            any |= tokens[k];
        if (KVRT_LIKELY(any >= 0))
            scan = 0;
    }
    const int32_t *entry_tokens = tokens;
    for (uint32_t i = 0; i < scan; entry_tokens += counts[i++]) {
        if (!check_draft(s, ids[i], entry_tokens, counts[i], &status)) {
            failed = i;
            break;
        }
    }
    if (KVRT_UNLIKELY(failed != num_seqs)) {
        for (uint32_t k = 0; k < num_published; k++)
            s->seqs[published[k]].engine_drafts = 0;
        return kvrt_fail(s->ctx, status, "entry %u: %s", failed, kvrt_ctx_last_error(s->ctx));
    }
    if (KVRT_LIKELY(waiting == 0))
        return KVRT_OK;
    /* Every entry again, in order, so that an id given twice keeps its
     * last drafts. */
    const int32_t *at = tokens;
    for (uint32_t i = 0; i < num_seqs; i++) {
        seq_t *q = &s->seqs[(uint32_t)ids[i] - 1]; /* looked up above */
        const uint32_t n = counts[i];
        sched_copy32(q->draft, KVRT_SCHED_MAX_DRAFT, at, (size_t)(tokens + total - at), n);
        q->engine_drafts = (uint8_t)n;
        at += n;
    }
    return KVRT_OK;
}

static void fill_info(const kvrt_sched_t *s, const seq_t *q, kvrt_seq_info_t *out)
{
    *out = (kvrt_seq_info_t){
        .id = sched_id(s, q),
        .user_tag = q->user_tag,
        .state = (kvrt_seq_state_t)q->state,
        .end_reason = (kvrt_seq_end_reason_t)q->end_reason,
        .status = q->status,
        .priority = q->priority,
        .prompt_tokens = q->prompt_len,
        .output_tokens = q->num_tokens - q->prompt_len,
        .computed_tokens = q->computed,
        .cached_tokens = q->cached_tokens,
        .preemptions = q->preemptions,
        .draft_length = s->max_draft ? q->draft_len : 0,
        .spec_proposed = q->spec_proposed,
        .spec_accepted = q->spec_accepted,
        .admitted_ns = q->admitted_ns,
        .first_token_ns = q->first_token_ns,
        .end_ns = q->end_ns,
        .deadline_missed = q->deadline_missed,
        .output = sched_seq_tokens(q, q->num_tokens) + q->prompt_len,
    };
}

_Static_assert(sizeof(kvrt_seq_info_t) == KVRT_SEQ_INFO_SIZE_1_0,
               "kvrt_seq_info_t changed size: append fields and keep the 1.0 size");

/* Writes q's info as the first `size` bytes of *out (the caller's struct). */
static void copy_info(const kvrt_sched_t *s, const seq_t *q, void *out, size_t size)
{
    kvrt_seq_info_t info;
    fill_info(s, q, &info);
    memcpy(out, &info, size < sizeof(info) ? size : sizeof(info));
}

KVRT_EXPORT kvrt_status_t kvrt_seq_info_sized(const kvrt_sched_t *s, kvrt_seq_id_t id,
                                              kvrt_seq_info_t *info_out, size_t info_size)
{
    if (!s)
        return KVRT_ERR_INVALID_ARG;
    if (!info_out || info_size < KVRT_SEQ_INFO_SIZE_1_0)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "info_out is NULL or its size %zu is below %u", info_size,
                         KVRT_SEQ_INFO_SIZE_1_0);
    const seq_t *q = sched_lookup(s, id);
    if (!q)
        return unknown_request(s, id);
    copy_info(s, q, info_out, info_size);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_seq_blocks(const kvrt_sched_t *s, kvrt_seq_id_t id,
                                          const int32_t **blocks_out,
                                          uint32_t *num_blocks_out, uint32_t *num_tokens_out)
{
    return kvrt_seq_group_blocks(s, id, 0, blocks_out, num_blocks_out, num_tokens_out);
}

KVRT_EXPORT kvrt_status_t kvrt_seq_group_blocks(const kvrt_sched_t *s, kvrt_seq_id_t id,
                                                uint32_t group, const int32_t **blocks_out,
                                                uint32_t *num_blocks_out,
                                                uint32_t *num_tokens_out)
{
    if (!s)
        return KVRT_ERR_INVALID_ARG;
    if (group >= s->num_groups)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "group %u of %u", group,
                         s->num_groups);
    seq_t *q = sched_lookup(s, id);
    if (!q)
        return unknown_request(s, id);
    static const int32_t none[1] = {KVRT_NULL_BLOCK};
    const int32_t *blocks = none;
    uint32_t nb = 0, nt = 0;
    kvrt_table_id_t table = *sched_gref(s, q, group).table;
    if (table && !q->release_at_commit) {
        kvrt_table_view(s->groups[group].pool, table, &blocks, &nb, &nt);
        nt += (uint32_t)q->lag; /* tokens the pool's table has not been told of yet */
        /* A table ahead (q->lag < 0) holds blocks for the next tokens too:
         * the view stops at the blocks of the request's own tokens. */
        uint32_t own = sched_group_blocks_for(&s->groups[group], nt);
        if (nb > own)
            nb = own;
    }
    if (blocks_out)
        *blocks_out = blocks;
    if (num_blocks_out)
        *num_blocks_out = nb;
    if (num_tokens_out)
        *num_tokens_out = nt;
    return KVRT_OK;
}

void sched_slot_free(kvrt_sched_t *s, seq_t *q)
{
    q->next_free = s->free_head;
    s->free_head = sched_slot(s, q);
    s->live--;
}

/* Kills a drained request's id. Its memory waits for the next drain so the
 * event's output pointer stays valid until then; its slot returns to the
 * free list now, or at commit when the plan still names it. */
static void forget(kvrt_sched_t *s, seq_t *q)
{
    s->drained_memory[s->num_drained_memory++] = q->allocation;
    q->allocation = NULL;
    q->generation = sched_next_generation(q->generation); /* odd -> even: dead */
    if (!q->release_at_commit)
        sched_slot_free(s, q);
}

KVRT_EXPORT kvrt_status_t kvrt_sched_drain_ended_sized(kvrt_sched_t *s,
                                                       kvrt_seq_info_t *events_out,
                                                       size_t event_size, uint32_t capacity,
                                                       uint32_t *count_out)
{
    if (!s)
        return KVRT_ERR_INVALID_ARG;
    if (!count_out || (capacity && !events_out) || event_size < KVRT_SEQ_INFO_SIZE_1_0)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "count_out and (with capacity > 0) events_out are required, and "
                         "event_size (%zu) at least %u",
                         event_size, KVRT_SEQ_INFO_SIZE_1_0);
    for (uint32_t i = 0; i < s->num_drained_memory; i++)
        kvrt_arena_free(&s->arena, s->drained_memory[i]);
    s->num_drained_memory = 0;
    uint32_t n = 0;
    while (n < capacity && s->ended_count) {
        seq_t *q = &s->seqs[s->ended[s->ended_head]];
        copy_info(s, q, (char *)events_out + (size_t)n++ * event_size, event_size);
        s->ended_head = (s->ended_head + 1) % s->max_requests;
        s->ended_count--;
        forget(s, q);
    }
    *count_out = n;
    return KVRT_OK;
}

void sched_free_requests(kvrt_sched_t *s)
{
    for (uint32_t i = 0; i < s->num_drained_memory; i++)
        kvrt_arena_free(&s->arena, s->drained_memory[i]);
    s->num_drained_memory = 0;
    /* Live requests, and drained ones whose blocks wait for a commit. */
    for (uint32_t i = 0; i < s->max_requests; i++) {
        seq_t *q = &s->seqs[i];
        for (uint32_t g = 0; g < s->num_groups; g++) {
            kvrt_table_id_t *table = sched_gref(s, q, g).table;
            if (*table)
                kvrt_table_destroy(s->groups[g].pool, *table);
            *table = 0;
        }
        kvrt_arena_free(&s->arena, q->allocation);
        q->allocation = NULL;
    }
}
