/*
 * kvrt/sched.h - the scheduler: requests, continuous batching under a token
 * budget, batch plans laid out for attention kernels, commit of sampled
 * tokens, and speculative-decoding queues (engine drafts or the built-in
 * n-gram prompt-lookup proposer).
 *
 * One engine step is:
 *
 *     kvrt_sched_step(sched, now_ns, &plan);   // what to run, where to write KV
 *     ... engine runs the model on the plan and samples ...
 *     kvrt_sched_commit(sched, &commit);       // sampled tokens, accepted drafts
 *     kvrt_sched_drain_ended(sched, ...);      // requests that ended
 *
 * Time is whatever clock the caller passes as now_ns (wall or simulated);
 * kvrt never reads a clock for scheduling decisions. Deadlines are absolute
 * values on that clock.
 *
 * ---- Policies ----------------------------------------------------------
 *
 * Sequence state. A sequence holds tokens t[0..n): the prompt then every
 * output token. Its first c tokens are *computed* (their K/V is in its block
 * table). A sequence with c < n - 1 is in prefill; with c == n - 1 it is in
 * decode (the last sampled token is the next input). A step that brings c to
 * n samples one token (the plan entry says `sample`).
 *
 * Admission order (waiting queue). Higher `priority` first; within one
 * priority, requests with a TTFT deadline before requests without, ordered
 * earliest deadline first (EDF); then first come, first served (the order of
 * kvrt_seq_add). A preempted request keeps its place (its original
 * priority, deadline and arrival), so it is readmitted before later ones.
 * Admission stops at the first request that does not fit (no skipping:
 * a large request is never starved by smaller ones behind it; the one
 * exception is a request that waits for prompt blocks another request is
 * computing, shared_prefill_min_tokens below, which keeps its place while
 * admission goes on behind it). Blocks
 * that requests behind the head hold while queued never keep it waiting:
 * when it lacks blocks, a request behind it holding pinned prefix hits
 * gives them up, then queued requests holding arrived K/V (see "waiting
 * for KV") give it up, the one the admission order reaches last first,
 * until the head fits, provided the pool's free and idle-cached blocks and
 * all of theirs could make it fit (otherwise their K/V is kept and the head
 * waits for running requests).
 *
 * Step order and budget accounting. Every step spends at most
 * max_batch_tokens query tokens on at most max_seqs sequences:
 *   1. running decodes, 1 token each (1 + drafts when speculating);
 *   2. running sequences still in prefill, one chunk each;
 *   3. waiting requests, in admission order, while a sequence slot, budget
 *      and blocks remain, and fewer than max_batch_tokens requests run (so
 *      that every running decode has its token in the budget).
 * A prefill chunk is min(uncomputed tokens, prefill_chunk_tokens, budget
 * left); a prompt longer than that is split over several steps (chunked
 * prefill), interleaved with other sequences' decodes. Only uncomputed
 * tokens count against the budget. A chunk never ends inside a multimodal
 * item of the request's keys (the engine consumes an item's encoder output
 * whole): a chunk that would end inside one ends before it; a chunk that
 * starts at an item (or inside it, after a prefix hit) takes the rest of
 * the item whole, beyond prefill_chunk_tokens if need be, or waits for a
 * step with that much budget left (an item longer than max_batch_tokens is
 * refused at kvrt_seq_add). That wait is one step, plus one per item that
 * waited before it: the first request in a step whose item did not fit has
 * its chunk held for it in the next step, before decodes (those that do
 * not fit in what is left wait that step).
 * The cache's query and hit of a request count in kvrt_sched_stats_t at
 * its admission.
 *
 * Prefix caching (when the scheduler has a cache; per request see
 * kvrt_seq_cache_flags: skip read, skip write, drop the last hit). At
 * admission the request's tokens are matched against the cache (kvrt_cache_match on all
 * but the last token, which is always recomputed so there are logits to
 * sample); hit blocks are adopted into its block table, count as computed,
 * cost no budget and need no new block. A head that does not fit keeps its
 * hits in its table while it waits (one query per request, no rehashing,
 * its prefix safe from eviction); at most one waiting request is so
 * pinned (queued requests holding arrived K/V also hold their hits), and
 * these give them up before any running sequence is preempted.
 * At commit every block that became
 * full is hashed (once) and inserted into the cache; rejected speculative
 * tokens are rolled back before that and never reach it.
 *
 * Watermark. A waiting request is admitted only while the blocks its first
 * chunk needs leave the pool above its watermark (kvrt_pool_above_watermark)
 * when use_watermark is on (default); running sequences may use the reserve,
 * so decodes rarely need to preempt.
 *
 * Preemption. When a running sequence needs a block and the pool has none,
 * first a waiting head gives up its prefix hits, then other running
 * sequences give back the blocks only rejected drafts used (see
 * speculation; they hold nothing anyone computed), then queued requests
 * holding K/V that arrived give it up (see "waiting for KV"; the one the
 * admission order reaches last goes first; with a prefix cache the blocks
 * stay cached, idle).
 * Then the scheduler preempts a *victim*: among all running sequences (the
 * one in need included, whether or not already placed in this step's
 * plan), the lowest priority, then the latest arrival (kvrt_seq_add order).
 * So a request is never preempted to make room for one of lower priority,
 * and among equal priorities the earlier arrival keeps running (FCFS). A
 * victim already in the plan leaves it (its tokens return to the budget,
 * its block copies are dropped). The victim's blocks are freed (full ones
 * stay in the prefix cache, so recomputation of its prefix is mostly hits)
 * and it goes back to the waiting queue, keeping its key, to be recomputed
 * from its tokens; it is not readmitted in the step that preempted it.
 * When the victim is the sequence in need itself, it is the one preempted.
 * A sequence that cannot get a block even when it is the only one running
 * (the caller holds the rest of the pool) ends FAILED with
 * KVRT_ERR_NO_BLOCKS; while arrivals or plans in flight hold blocks it
 * waits for them instead (a request that ended while a plan in flight
 * still holds it does not count as running: its blocks come back when
 * that plan commits).
 * New admissions never preempt running sequences.
 *
 * Speculation (max_draft_tokens k > 0). Before each step a decoding sequence
 * may carry up to k draft tokens: set by the engine (kvrt_seq_set_draft,
 * e.g. from a draft model) or, when the engine set none and the n-gram
 * proposer is on, proposed by matching the sequence's last n tokens (n from
 * ngram_max down to ngram_min) against its earlier tokens and taking the
 * continuation of the longest, most recent match among the 16 most recent
 * candidate positions (a hash-chain index per sequence walked at most 16
 * deep, so a proposal costs O(1) amortized, not O(context); an older,
 * longer match past them is not found).
 * A speculative entry queries 1 + d tokens (the last sampled token and d
 * drafts) with a KV slot for each. Commit takes the accepted count a
 * (0..d) and a + 1 tokens (the accepted drafts, which must equal the
 * drafts, then the bonus token); the d - a rejected drafts are rolled
 * back: their positions are planned again, and the blocks only they used
 * stay with the request for its next tokens (its row shows them past its
 * tokens' blocks; kvrt_seq_blocks and the CSR tables do not) until a
 * running sequence needs a block the pool does not have free: then they go
 * back first, before anyone is preempted (on one group; a hybrid
 * scheduler truncates every group's table to the computed length at the
 * rollback, so those blocks go back to the pools at once). The engine's
 * drafts for the next step may come with the commit (KVRT_COMMIT_DRAFTS),
 * as a draft model proposes them right after verification.
 * Adaptive draft length (default on): each sequence estimates p, the
 * chance that a draft is accepted once the ones before it were (decaying
 * sums of drafts accepted over drafts tried, a rejection trying one), and
 * proposes clamp(floor(ln 0.25 / ln p), 1, k) drafts, so drafts whose
 * chance of acceptance falls below 1/4 are not proposed (docs/scheduler.md
 * says where that model of one chance per draft falls short). Back-off:
 * draft tokens only use budget left after one token per running decode and
 * after the prefill work that could run this step; when the budget binds,
 * drafts shrink first (evenly across sequences), down to plain decoding.
 *
 * Ends. Every request ends exactly once: by length (max_new_tokens output
 * tokens, or max_seq_tokens in all), by a stop token (kept as the last
 * output token; one among the first min_tokens outputs does not count),
 * aborted by the caller, or failed with a status. Its end is
 * reported once by kvrt_sched_drain_ended(); after that its id is unknown.
 *
 * Memory: everything the hot path uses is sized at creation (plan arrays,
 * the waiting heap, per-sequence token arrays sized at kvrt_seq_add), so
 * once warm, step and commit never allocate.
 * Threads: the context's rule (one thread at a time for a scheduler, its
 * pool and its cache). It holds for every function below; none takes a
 * lock or starts a thread, and kvrt_seq_await_kv_groups says what another
 * thread may do while K/V arrives.
 */
#ifndef KVRT_SCHED_H
#define KVRT_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "kvrt/block_table.h"
#include "kvrt/cache.h"
#include "kvrt/context.h"
#include "kvrt/pool.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvrt_sched kvrt_sched_t;

/* A request's id: generational, so a stale or made-up id is refused with
 * KVRT_ERR_UNKNOWN_REQUEST; so is an arrival's id, and an id of another
 * scheduler of this process, live or destroyed (ids carry six bits of a
 * count of schedulers created, and each scheduler starts its generation
 * counts at a random point, so two created a multiple of 64 apart take
 * each other's ids only if their counts happen to meet). 0 is never a
 * valid id. Opaque: compare them, never decode them; their values differ
 * from run to run. */
typedef uint64_t kvrt_seq_id_t;

/* Most draft tokens per sequence per step. */
#define KVRT_SCHED_MAX_DRAFT 16u
/* Longest n-gram the proposer matches. */
#define KVRT_SCHED_MAX_NGRAM 16u
/* Most stop token ids per request. */
#define KVRT_SEQ_MAX_STOP_TOKENS 64u
/* Most plans in flight (asynchronous scheduling, max_plans_in_flight). */
#define KVRT_SCHED_MAX_PLANS_IN_FLIGHT 2u
/* The input token of a decode whose previous token is still being sampled
 * by an uncommitted plan (asynchronous scheduling): the engine puts in the
 * token it sampled for that sequence in the previous plan. */
#define KVRT_TOKEN_PLACEHOLDER (-1)

enum kvrt_sched_params_field {
    KVRT_SCHED_PARAM_MAX_BATCH_TOKENS = 1u << 0, /* max_batch_tokens */
    KVRT_SCHED_PARAM_MAX_SEQS = 1u << 1,         /* max_seqs */
    KVRT_SCHED_PARAM_CHUNK = 1u << 2,            /* prefill_chunk_tokens */
    KVRT_SCHED_PARAM_WATERMARK = 1u << 3,        /* use_watermark */
    KVRT_SCHED_PARAM_MAX_REQUESTS = 1u << 4,     /* max_requests */
    KVRT_SCHED_PARAM_MAX_SEQ_TOKENS = 1u << 5,   /* max_seq_tokens */
    KVRT_SCHED_PARAM_DRAFT = 1u << 6,            /* max_draft_tokens */
    KVRT_SCHED_PARAM_NGRAM = 1u << 7,            /* ngram_min, ngram_max: turns
                                                    the n-gram proposer on */
    KVRT_SCHED_PARAM_ADAPTIVE_DRAFT = 1u << 8,   /* adaptive_draft */
    KVRT_SCHED_PARAM_CSR_TABLES = 1u << 9,       /* csr_block_tables */
    KVRT_SCHED_PARAM_PLANS_IN_FLIGHT = 1u << 10, /* max_plans_in_flight */
    KVRT_SCHED_PARAM_SHARED_PREFILL = 1u << 11   /* shared_prefill_min_tokens */
};

/*
 * Scheduler parameters. A field is read only when its bit is set in
 * field_mask; a zeroed struct (or NULL) means all defaults.
 */
typedef struct kvrt_sched_params {
    uint64_t field_mask;
    uint32_t max_batch_tokens;     /* token budget per step, 1..2^24; default 8192 */
    uint32_t max_seqs;             /* sequences per step (and running, at most
                                      max_batch_tokens of them), 1..65536;
                                      default 256; max_seqs times a request's
                                      most blocks (max_seq_tokens +
                                      max_draft_tokens, per group) at most 2^27 */
    uint32_t prefill_chunk_tokens; /* longest prefill chunk, 1..max_batch_tokens;
                                      default max_batch_tokens */
    int use_watermark;             /* 0 or 1, default 1 */
    uint32_t max_requests;         /* live requests (added, not yet drained;
                                      one drained while an uncommitted plan
                                      names it keeps its place until that
                                      commit), 1..2^24; default 65536 */
    uint32_t max_seq_tokens;       /* prompt + output limit per request,
                                      2..KVRT_TABLE_MAX_TOKENS; default 131072 */
    uint32_t max_draft_tokens;     /* k, 0..KVRT_SCHED_MAX_DRAFT; default 0 (off) */
    uint32_t ngram_min;            /* 1 <= ngram_min <= ngram_max <= */
    uint32_t ngram_max;            /*   KVRT_SCHED_MAX_NGRAM; needs k > 0 */
    int adaptive_draft;            /* 0 or 1, default 1 */
    /* 1: the plan also carries CSR block tables rebuilt every step
     * (O(total blocks) per step). Default 0: persistent padded rows only. */
    int csr_block_tables;
    /* Plans the engine may hold uncommitted, 1..KVRT_SCHED_MAX_PLANS_IN_FLIGHT;
     * default 1 (each step waits for the previous commit). 2: asynchronous
     * scheduling, see kvrt_sched_step. */
    uint32_t max_plans_in_flight;
    /* Prompts that share a prefix, computed once (with a prefix cache; on
     * a hybrid scheduler group 0's blocks decide): a request coming up for
     * admission whose next uncached block is the block at the committed
     * length of a running request still in prefill (that writes to the
     * cache; the block holding that length, on a hybrid scheduler that
     * length rounded down to the largest block size, as hits are), and whose
     * blocks from there hold that request's next shared_prefill_min_tokens
     * tokens (rounded up to whole blocks: the same tokens, salt, adapter
     * and multimodal items), waits in the queue, keeping its place, while
     * that request has that many of their shared blocks left to commit;
     * then it is matched and hits what was committed. Admission goes on
     * with the requests behind it meanwhile. 0: never wait (every request
     * computes what is not cached when it is admitted). Default 256, also
     * for callers that do not set the bit. At most max_seqs requests wait
     * in one step; admission stops there. docs/scheduler.md, "Prompts
     * sharing a prefix"; kvrt_sched_stats_t.shared_prefill_waits. */
    uint32_t shared_prefill_min_tokens;
} kvrt_sched_params_t;

/*
 * kvrt_sched_create - a scheduler over pool, with prefix caching through
 * cache (NULL: none; else the cache attached to pool). params may be NULL
 * (defaults); it is copied. Registers ctl nodes "sched.<N>.*" (see
 * kvrt_sched_stats_t). The pool and cache refuse to be destroyed
 * (KVRT_ERR_BUSY) while the scheduler exists; destroy it with
 * kvrt_sched_destroy() first, or let kvrt_ctx_destroy() free all three.
 * Errors: KVRT_ERR_INVALID_ARG (NULL ctx/pool/sched_out, a pool of another
 * context, a cache attached to another pool, unknown field bits, a value
 * out of its range, ngram without drafts, block-table rows past 2^27
 * entries: see max_seqs), KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_sched_create(kvrt_ctx_t *ctx, kvrt_pool_t *pool, kvrt_cache_t *cache,
                                const kvrt_sched_params_t *params,
                                kvrt_sched_t **sched_out);

/* ---- hybrid models: several cache groups ------------------------------------
 *
 * A model whose layers keep K/V differently (full attention and
 * sliding-window layers, as Gemma 2/3, Mistral, gpt-oss) keeps each kind's
 * K/V in a *cache group*. One scheduler drives them all: every request
 * holds one block table per group, and the plan carries one slot mapping
 * and one set of block-table rows per group (kvrt_batch_plan_t.groups).
 * Group 0 is also what the plan's single-group fields (slot_mapping,
 * block_rows, copies, CSR tables, tokens_per_block) describe.
 *
 * Pools: a group has a pool of its own (its own block size and memory),
 * or shares another group's pool and prefix cache, when every sharer's
 * block holds the same bytes (as many layers per group: split a model's
 * window layers into groups of as many layers as its full-attention
 * ones). Sharing needs no split of memory decided in advance: blocks a
 * window left serve any group, and one eviction order covers every
 * group's cached blocks. A request holds one table of the pool per
 * sharer (the pool's max_tables counts them all).
 *
 * Policies:
 *   - A step plans a request only when every group has the blocks its
 *     tokens need; preemption, watermark and failure apply to the groups
 *     together (a victim frees its blocks in every group). Every check of
 *     a pool (the step's, an arrival's, kvrt_seq_add's limit) counts what
 *     all the groups sharing it need.
 *   - Sliding window W (tokens): the query at position p reads positions
 *     [p - W + 1, p]. A block whose tokens all lie before
 *     computed - W + 1 (computed: the request's committed length, so an
 *     uncommitted plan never loses what it reads) is released the next
 *     time a step comes to plan the request (decode or chunk; released
 *     even if the request then waits or is preempted), and its row entry becomes
 *     KVRT_NULL_BLOCK (rows_changed lists the row). With a prefix cache
 *     the released block stays cached (evictable) like any other; when
 *     the request lets go of its tables (it ends, is preempted or gives
 *     its blocks up), the blocks still cached that its window released
 *     count as released then, with the rest, deepest first, as full-size
 *     K/V would be. Groups sharing a cache release a request depth by
 *     depth, interleaved, so that no group's chain goes before another's
 *     leaves (a hit needs every group).
 *   - Prefix hits: a hit of H tokens is used only if every group can
 *     serve it: H is a multiple of every group's block size; a
 *     full-attention group holds all of its first H tokens' blocks in the
 *     cache; a sliding-window group holds the blocks of tokens
 *     [H - W + 1, H) (the window the first recomputed token reads; earlier
 *     blocks may have been evicted and become holes, KVRT_NULL_BLOCK, in
 *     its table). H is the largest length that satisfies every group.
 *     KVRT_SEQ_CACHE_DROP_LAST_HIT drops the last multiple of the largest
 *     block size.
 *   - Either every group has a prefix cache or none. In a shared cache, a
 *     group after the first to name it chains its blocks' content hashes
 *     from a root of its own (docs/block-hash.md), since its blocks hold
 *     other layers' K/V for the same tokens, and finds its hits by lookups.
 *     Each cache counts one query each time a request is matched: a cache
 *     some full-attention group matches counts that match; a cache whose
 *     every group finds its hits by lookups (a window-only model, a window
 *     group 0 sharing its pool) counts the hit those groups serve and the
 *     reason of the miss that ended it.
 *   - Waiting for KV: kvrt_seq_await_kv_groups allocates blocks in every
 *     group (a sliding-window group only those of the window the first
 *     recomputed token reads; its earlier entries are KVRT_NULL_BLOCK) and
 *     names each group's blocks to fill; each group reports what landed
 *     (kvrt_arrival_group_complete) and the request waits until all have.
 *     kvrt_seq_await_kv, which names one group's blocks, is refused with
 *     KVRT_ERR_UNSUPPORTED when there are several groups.
 */

/* Most cache groups of one scheduler. */
#define KVRT_SCHED_MAX_GROUPS 8u

enum kvrt_sched_group_field {
    KVRT_SCHED_GROUP_CACHE = 1u << 0, /* cache */
    KVRT_SCHED_GROUP_WINDOW = 1u << 1 /* sliding_window */
};

/* One cache group. pool is always read, the rest by field_mask. */
typedef struct kvrt_sched_group_params {
    uint64_t field_mask;
    kvrt_pool_t *pool;       /* the group's pool (its block size is the group's) */
    kvrt_cache_t *cache;     /* the prefix cache attached to pool; default none */
    uint32_t sliding_window; /* tokens a query reads back, itself included,
                                1..KVRT_TABLE_MAX_TOKENS; 0 (default): full
                                attention */
} kvrt_sched_group_params_t;

/*
 * kvrt_sched_create_groups - a scheduler over num_groups cache groups
 * (1..KVRT_SCHED_MAX_GROUPS), groups[g] describing group g; everything is
 * copied. kvrt_sched_create(ctx, pool, cache, params, out) is this call
 * with one full-attention group. Groups naming the same pool share it
 * (see above). Every pool and cache is held as by kvrt_sched_create.
 * Errors: as kvrt_sched_create, and KVRT_ERR_INVALID_ARG for NULL groups,
 * a count out of range, unknown group field bits, a pool of another
 * context, a cache attached to another pool, caches on some groups only.
 */
kvrt_status_t kvrt_sched_create_groups(kvrt_ctx_t *ctx, uint32_t num_groups,
                                       const kvrt_sched_group_params_t *const *groups,
                                       const kvrt_sched_params_t *params,
                                       kvrt_sched_t **sched_out);

/*
 * kvrt_sched_destroy - ends every live request (without events), frees
 * their blocks, those of outstanding arrivals included (stop writing K/V
 * into them first), and the scheduler. Plans not yet committed (their
 * arrays) and the `output` of drained end events stop being valid. NULL
 * is a no-op. Errors: none.
 */
kvrt_status_t kvrt_sched_destroy(kvrt_sched_t *sched);

/* ---- requests ------------------------------------------------------------ */

enum kvrt_seq_params_field {
    KVRT_SEQ_PARAM_STOP = 1u << 0,     /* stop_tokens, num_stop_tokens */
    KVRT_SEQ_PARAM_PRIORITY = 1u << 1, /* priority */
    KVRT_SEQ_PARAM_DEADLINE = 1u << 2, /* deadline_ns */
    KVRT_SEQ_PARAM_KEYS = 1u << 3,       /* keys */
    KVRT_SEQ_PARAM_USER_TAG = 1u << 4,   /* user_tag */
    KVRT_SEQ_PARAM_CACHE_FLAGS = 1u << 5,/* cache_flags */
    KVRT_SEQ_PARAM_MIN_TOKENS = 1u << 6  /* min_tokens */
};

/* Per-request prefix-cache control (kvrt_seq_params_t.cache_flags). */
enum kvrt_seq_cache_flags {
    /* Never matched against the cache: every token is computed (an engine
     * that returns prompt logprobs needs them all). */
    KVRT_SEQ_CACHE_SKIP_READ = 1u << 0,
    /* Its blocks are never inserted: it leaves no K/V behind for others (a
     * tenant that must not share). It may still read unless SKIP_READ. */
    KVRT_SEQ_CACHE_SKIP_WRITE = 1u << 1,
    /* A match keeps all hit blocks but the last: the tokens of that block
     * are recomputed, so an EAGLE/MTP draft model gets the target model's
     * hidden states for them. */
    KVRT_SEQ_CACHE_DROP_LAST_HIT = 1u << 2
};

/*
 * A request. prompt, prompt_len and max_new_tokens are always read, the rest
 * by field_mask. Everything is copied (prompt, stop tokens, the keys' salt
 * and multimodal items); nothing is retained after the call.
 */
typedef struct kvrt_seq_params {
    uint64_t field_mask;
    const int32_t *prompt;        /* token ids, >= 0 */
    uint32_t prompt_len;          /* >= 1 */
    uint32_t max_new_tokens;      /* >= 1 */
    /* Ends the request when sampled; copied. Requests without min_tokens
     * share the scheduler's copy of their set (it keeps the first 16
     * distinct sets it is given), which keeps each commit's stop check off
     * the request's own memory (docs/scheduler.md, "Cost"). */
    const int32_t *stop_tokens;
    uint32_t num_stop_tokens;     /* 0..KVRT_SEQ_MAX_STOP_TOKENS */
    int32_t priority;             /* higher runs first; default 0 */
    uint64_t deadline_ns;         /* TTFT deadline on the step clock */
    /* Tenant salt, adapter, multimodal items. A pointer, so that the keys
     * struct can grow without moving the fields after it. Multimodal items
     * also bound prefill chunks (see "Step order"). */
    const kvrt_hash_keys_t *keys;
    uint64_t user_tag;            /* opaque, echoed in plans and events */
    uint32_t cache_flags;         /* enum kvrt_seq_cache_flags; default 0 */
    /* Stop tokens do not end the request before it has produced more than
     * min_tokens tokens (they are kept as ordinary output); 0..max_new_tokens,
     * default 0. */
    uint32_t min_tokens;
} kvrt_seq_params_t;

/*
 * kvrt_seq_add - enqueues a request (state WAITING); it runs from the next
 * step on. *id_out is written only on success.
 * A request whose prompt_len + max_new_tokens exceeds max_seq_tokens is
 * accepted and ends by length at max_seq_tokens tokens in all.
 * Errors: KVRT_ERR_INVALID_ARG (NULL, unknown field bits, prompt_len or
 * max_new_tokens 0, a negative token id, too many stop tokens, NULL or bad
 * keys, a multimodal item longer than max_batch_tokens (it could never be
 * scheduled whole) or ending past the prompt, unknown cache flags,
 * min_tokens above max_new_tokens, a prompt that leaves no room for one
 * output token under max_seq_tokens),
 * KVRT_ERR_NO_BLOCKS (the request could not fit in the pool even alone,
 * above the pool's watermark when use_watermark is on; a sliding-window
 * group needs its window and, per plan in flight, the request's largest
 * step: a prefill chunk, its longest multimodal item or a decode with its
 * drafts; docs/scheduler.md),
 * KVRT_ERR_REQUEST_LIMIT (max_requests live, counting drained requests an
 * uncommitted plan still names), KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_seq_add(kvrt_sched_t *sched, const kvrt_seq_params_t *params,
                           kvrt_seq_id_t *id_out);

/*
 * kvrt_seq_abort - ends a request as ABORTED and frees everything it holds
 * (its blocks, its place in the queue), whether it is waiting, running or
 * preempted. Idempotent: a request that already ended (and is not yet
 * drained) returns KVRT_OK and nothing changes. A request in the current,
 * uncommitted plan ends at once; its blocks are freed at commit (the engine
 * may still be writing them) and its commit entry is ignored (its tokens
 * must still be passed).
 * Errors: KVRT_ERR_INVALID_ARG (NULL sched), KVRT_ERR_UNKNOWN_REQUEST (never
 * added, or already drained).
 */
kvrt_status_t kvrt_seq_abort(kvrt_sched_t *sched, kvrt_seq_id_t id);

/*
 * kvrt_seq_set_draft - the draft tokens the engine proposes for the
 * sequence's next step (copied; replaces any earlier draft; consumed by
 * that step, or with plans in flight by the first step planning it while no
 * uncommitted plan holds it). The step may use fewer (adaptive length, back-off, the
 * request's remaining length). count 0 clears the draft.
 * Errors: KVRT_ERR_INVALID_ARG (NULL tokens with count > 0, count above
 * max_draft_tokens, a negative token id), KVRT_ERR_UNSUPPORTED (speculation
 * off), KVRT_ERR_UNKNOWN_REQUEST, KVRT_ERR_BAD_STATE (the request is not
 * running in decode, or has ended).
 */
kvrt_status_t kvrt_seq_set_draft(kvrt_sched_t *sched, kvrt_seq_id_t id,
                                 const int32_t *tokens, uint32_t count);

/*
 * kvrt_sched_set_drafts - kvrt_seq_set_draft for num_seqs sequences in one
 * call (what an engine with a draft model does every step): sequence
 * ids[i] gets counts[i] draft tokens, taken in order from tokens (their
 * concatenation, sum(counts) long). Copied; nothing is retained. All or
 * nothing: a call refused (at any entry) leaves every request's drafts as
 * they were. An id listed twice keeps its last entry.
 * Errors: as kvrt_seq_set_draft (naming the first bad entry), and
 * KVRT_ERR_INVALID_ARG for NULL ids/counts with num_seqs > 0.
 */
kvrt_status_t kvrt_sched_set_drafts(kvrt_sched_t *sched, uint32_t num_seqs,
                                    const kvrt_seq_id_t *ids, const uint32_t *counts,
                                    const int32_t *tokens);

typedef enum kvrt_seq_state {
    KVRT_SEQ_WAITING = 0,   /* queued, never admitted */
    KVRT_SEQ_RUNNING = 1,   /* holds blocks; in prefill or decode */
    KVRT_SEQ_PREEMPTED = 2, /* queued again for recomputation */
    KVRT_SEQ_ENDED = 3,     /* see end_reason; waits to be drained */
    KVRT_SEQ_WAITING_KV = 4 /* holds blocks its prefix is arriving into
                               (kvrt_seq_await_kv); not scheduled */
} kvrt_seq_state_t;

typedef enum kvrt_seq_end_reason {
    KVRT_END_NONE = 0,    /* not ended */
    KVRT_END_LENGTH = 1,  /* max_new_tokens (or max_seq_tokens) reached */
    KVRT_END_STOP = 2,    /* sampled a stop token */
    KVRT_END_ABORTED = 3, /* kvrt_seq_abort */
    KVRT_END_FAILED = 4   /* see status */
} kvrt_seq_end_reason_t;

/* A request's state (kvrt_seq_info) and, once ended, its end event. */
typedef struct kvrt_seq_info {
    kvrt_seq_id_t id;
    uint64_t user_tag;
    kvrt_seq_state_t state;
    kvrt_seq_end_reason_t end_reason;
    kvrt_status_t status;          /* KVRT_OK unless FAILED */
    int32_t priority;
    uint32_t prompt_tokens;
    uint32_t output_tokens;
    uint32_t computed_tokens;      /* K/V in its block table now */
    uint32_t cached_tokens;        /* prefix-cache hits, all admissions summed */
    uint32_t preemptions;
    uint32_t draft_length;         /* drafts it would propose now (adaptive) */
    uint64_t spec_proposed;        /* draft tokens verified */
    uint64_t spec_accepted;
    /* now_ns of the step that first admitted it; of the step that planned
     * its first output token (the clock before the model ran it); of the
     * step whose plan the commit that ended it applies, for an abort or a
     * request failed in a step of the latest step. 0 when not yet (an end
     * before any step: 0). */
    uint64_t admitted_ns;
    uint64_t first_token_ns;
    uint64_t end_ns;
    int deadline_missed;           /* 1: first_token_ns came after deadline_ns */
    /* Output token ids [0..output_tokens). In kvrt_seq_info: valid until the
     * next commit, abort or drain. In a drained event: valid until the next
     * kvrt_sched_drain_ended() or kvrt_sched_destroy(). */
    const int32_t *output;
} kvrt_seq_info_t;

/*
 * Growth of the caller-allocated outputs kvrt_seq_info_t and
 * kvrt_sched_stats_t: fields are only ever appended. The exported
 * functions take the size of the struct the caller was compiled with and
 * write only that many bytes (a newer library fills an older caller's
 * struct; an older library leaves a newer caller's extra fields as they
 * were); C and C++ callers use the inline wrappers, which pass sizeof.
 * Bindings (Python's ctypes) call the _sized functions with the size of
 * their own struct definition. Sizes below the first release's
 * (KVRT_SEQ_INFO_SIZE_1_0, KVRT_SCHED_STATS_SIZE_1_0) are refused.
 */
#define KVRT_SEQ_INFO_SIZE_1_0 112u

/*
 * kvrt_seq_info_sized - a request's current state, the first info_size
 * bytes of it. Errors: KVRT_ERR_INVALID_ARG (NULL, info_size below
 * KVRT_SEQ_INFO_SIZE_1_0), KVRT_ERR_UNKNOWN_REQUEST.
 */
kvrt_status_t kvrt_seq_info_sized(const kvrt_sched_t *sched, kvrt_seq_id_t id,
                                  kvrt_seq_info_t *info_out, size_t info_size);

/* kvrt_seq_info - kvrt_seq_info_sized() with this header's struct size. */
static inline kvrt_status_t kvrt_seq_info(const kvrt_sched_t *sched, kvrt_seq_id_t id,
                                          kvrt_seq_info_t *info_out)
{
    return kvrt_seq_info_sized(sched, id, info_out, sizeof(*info_out));
}

/*
 * kvrt_seq_blocks - zero-copy view of a request's block table (e.g. to
 * transfer its KV, or to fill an arrival): block ids, their count and the
 * tokens they hold, valid until the next step, commit, abort or arrival
 * call. Running requests, requests waiting for KV and queued requests that
 * hold hits or arrived KV have blocks; others give 0 blocks. The view
 * ends with the blocks of its tokens: blocks kept past them for the next
 * tokens (after rejected drafts) are not listed.
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_UNKNOWN_REQUEST.
 */
kvrt_status_t kvrt_seq_blocks(const kvrt_sched_t *sched, kvrt_seq_id_t id,
                              const int32_t **blocks_out, uint32_t *num_blocks_out,
                              uint32_t *num_tokens_out);

/*
 * kvrt_seq_group_blocks - kvrt_seq_blocks for cache group `group` (0 is
 * kvrt_seq_blocks). In a sliding-window group the blocks that left the
 * window read KVRT_NULL_BLOCK. Errors: KVRT_ERR_INVALID_ARG (NULL sched,
 * group out of range), KVRT_ERR_UNKNOWN_REQUEST.
 */
kvrt_status_t kvrt_seq_group_blocks(const kvrt_sched_t *sched, kvrt_seq_id_t id,
                                    uint32_t group, const int32_t **blocks_out,
                                    uint32_t *num_blocks_out, uint32_t *num_tokens_out);

/*
 * kvrt_sched_drain_ended_sized - moves up to `capacity` end events (oldest
 * first) into events_out and their count to *count_out; the drained
 * requests are forgotten (their ids become unknown). Each request's end is
 * reported exactly once. events_out is an array of elements of event_size
 * bytes (the caller's sizeof(kvrt_seq_info_t); see kvrt_seq_info_sized).
 * Output token arrays of drained events stay valid until the next call of
 * this function.
 * Errors: KVRT_ERR_INVALID_ARG (NULL sched/count_out, NULL events_out with
 * capacity > 0, event_size below KVRT_SEQ_INFO_SIZE_1_0).
 */
kvrt_status_t kvrt_sched_drain_ended_sized(kvrt_sched_t *sched, kvrt_seq_info_t *events_out,
                                           size_t event_size, uint32_t capacity,
                                           uint32_t *count_out);

/* kvrt_sched_drain_ended - the _sized call with this header's struct size. */
static inline kvrt_status_t kvrt_sched_drain_ended(kvrt_sched_t *sched,
                                                   kvrt_seq_info_t *events_out,
                                                   uint32_t capacity, uint32_t *count_out)
{
    return kvrt_sched_drain_ended_sized(sched, events_out, sizeof(*events_out), capacity,
                                        count_out);
}

/* ---- waiting for KV --------------------------------------------------------
 *
 * A request whose prefix K/V exists elsewhere (a lower tier of this host,
 * the prefill node of a disaggregated pair, a peer that holds the prefix)
 * need not recompute it. The caller that moves the bytes drives it:
 *
 *     kvrt_seq_await_kv(sched, id, &params, &arrival, &first, &count);
 *     kvrt_seq_blocks(sched, id, &blocks, NULL, NULL);
 *     ... write K/V into blocks[first .. first + count) asynchronously;
 *         every kvrt_sched_step meanwhile schedules other requests ...
 *     kvrt_arrival_complete(sched, arrival, landed_blocks);
 *
 * kvrt_seq_await_kv takes a queued request out of the waiting queue
 * (state WAITING_KV), keeps what the local prefix cache already holds, and
 * allocates blocks for the rest of its first params.num_tokens tokens. The
 * step never waits for it and never plans it. kvrt_arrival_complete says how
 * many of those blocks, counted from the first, hold valid K/V: they count
 * as computed and the request returns to the waiting queue with its place
 * (priority, deadline, arrival) and its blocks, and starts at the next step
 * that admits it; blocks that did not land are dropped and their tokens
 * recomputed. With a prefix cache the landed full blocks are inserted at
 * once. While queued, a request holding landed K/V gives it up (its tokens
 * are then matched and recomputed at admission) under block pressure: to
 * a running request that needs a block, before anyone is preempted, and to
 * a head of the queue ahead of it that lacks blocks, when that can make
 * the head fit (admission order above). So landed K/V never stalls the
 * queue: with nothing running, a head that fits in the pool less the
 * blocks of outstanding arrivals is admitted.
 *
 * The blocks of an arrival are never reused while the caller may still be
 * writing them: when the arrival's deadline passes (checked at every step)
 * the request goes back to the queue at once to be recomputed, and when it
 * is aborted it ends at once; in both cases the blocks stay held until the
 * caller calls kvrt_arrival_complete for that arrival, which it must do for
 * every arrival it started (after stopping or finishing its writes).
 * kvrt_sched_destroy frees every held block: stop all writes before it.
 * Bounds: one arrival per request; at most max_requests arrivals exist.
 *
 * Several cache groups (kvrt_sched_create_groups): the K/V of each group
 * arrives into that group's table, often on its own transfer:
 *
 *     kvrt_seq_await_kv_groups(sched, id, &params, num_groups, &arrival,
 *                              first, count);            (arrays [num_groups])
 *     for each group g:
 *         kvrt_seq_group_blocks(sched, id, g, &blocks, NULL, NULL);
 *         ... write blocks[first[g] .. first[g] + count[g]) ...
 *         kvrt_arrival_group_complete(sched, arrival, g, landed_g);
 *
 * The request stays in WAITING_KV until every group has reported; then
 * the longest prefix that every group holds (a full-attention group all
 * blocks of it, a sliding-window group the blocks of the window the next
 * token reads) becomes computed, as kvrt_arrival_complete does for one
 * group. A deadline or an abort gives the arrival up as above; each
 * group's blocks stay held until that group reports.
 */

/* An arrival's id: generational and tagged, like request ids (a request's
 * id or another scheduler's arrival id is refused as unknown); 0 is never
 * valid. */
typedef uint64_t kvrt_arrival_id_t;

enum kvrt_arrival_params_field {
    KVRT_ARRIVAL_PARAM_DEADLINE = 1u << 0 /* deadline_ns */
};

/* num_tokens is always read, the rest by field_mask. */
typedef struct kvrt_arrival_params {
    uint64_t field_mask;
    uint32_t num_tokens;  /* the request's leading tokens that arrive:
                             1 .. its token count - 1 (the last token is
                             always recomputed, for its logits) */
    uint64_t deadline_ns; /* on the step clock; a step at a later now_ns
                             gives the arrival up. Default: none */
} kvrt_arrival_params_t;

/*
 * kvrt_seq_await_kv - starts an arrival for a queued request (WAITING or
 * PREEMPTED): matches its tokens against the prefix cache (hits are kept)
 * and appends blocks up to params->num_tokens tokens to its block table.
 * *first_block_out is the table index of the first block the caller must
 * fill and *num_blocks_out how many (0 when the local cache already holds
 * the whole prefix; the arrival must still be completed, and its
 * completion keeps the hits as computed); the ids are in
 * kvrt_seq_blocks(). The blocks come out of the free and idle-cached pool
 * above its watermark (when the scheduler uses one); nothing is preempted.
 * Outputs are written only on success; on error the request stays queued
 * holding what it held, no other request loses anything (a pinned head
 * keeps its hits) and the scheduler's counters do not change; the prefix
 * cache has seen the lookup (its statistics and recency order).
 * Errors: KVRT_ERR_INVALID_ARG (NULL sched/params/outputs, unknown field
 * bits, num_tokens 0 or not below the request's token count),
 * KVRT_ERR_UNKNOWN_REQUEST, KVRT_ERR_BAD_STATE (the request is not queued,
 * or holds KV that arrived earlier), KVRT_ERR_REQUEST_LIMIT (max_requests
 * arrivals outstanding), KVRT_ERR_NO_BLOCKS (not enough blocks above the
 * watermark), KVRT_ERR_NO_TABLES, KVRT_ERR_NO_MEMORY, KVRT_ERR_UNSUPPORTED
 * (a scheduler of several cache groups: kvrt_seq_await_kv_groups). On one
 * sliding-window group the blocks before *first_block_out are
 * KVRT_NULL_BLOCK: only the window the first recomputed token reads
 * arrives.
 */
kvrt_status_t kvrt_seq_await_kv(kvrt_sched_t *sched, kvrt_seq_id_t id,
                                const kvrt_arrival_params_t *params,
                                kvrt_arrival_id_t *arrival_out, uint32_t *first_block_out,
                                uint32_t *num_blocks_out);

/*
 * kvrt_seq_await_kv_groups - kvrt_seq_await_kv over every cache group:
 * num_groups must be the scheduler's group count, and first_blocks_out[g]
 * and num_blocks_out[g] (arrays of num_groups, written only on success)
 * are the table indexes of group g's blocks to fill
 * (kvrt_seq_group_blocks). A full-attention group gets blocks for tokens
 * [its prefix hit, params->num_tokens); a sliding-window group of window W
 * only those of tokens [num_tokens - W + 1, num_tokens) past its hit, its
 * earlier entries being KVRT_NULL_BLOCK (its hits there are let go: they
 * stay cached and count as available). The blocks of every group are
 * allocated or none (each group above its pool's watermark when the
 * scheduler uses one); nothing is preempted. With one group it is
 * kvrt_seq_await_kv. Not thread-safe: the scheduler's thread, like every
 * call on it. No pointer is kept after the call.
 * Errors: those of kvrt_seq_await_kv but KVRT_ERR_UNSUPPORTED, and
 * KVRT_ERR_INVALID_ARG for num_groups other than the scheduler's.
 */
kvrt_status_t kvrt_seq_await_kv_groups(kvrt_sched_t *sched, kvrt_seq_id_t id,
                                       const kvrt_arrival_params_t *params,
                                       uint32_t num_groups, kvrt_arrival_id_t *arrival_out,
                                       uint32_t *first_blocks_out, uint32_t *num_blocks_out);

/*
 * kvrt_arrival_group_complete - cache group `group` of an arrival is over:
 * landed_blocks of the group's blocks, counted from its first, hold valid
 * K/V (all: success; fewer: it failed after those). The caller writes no
 * more into that group's blocks. When it is the last group to report, the
 * arrival ends as kvrt_arrival_complete: the longest prefix that every
 * group holds becomes computed (none: the request's hits are dropped and
 * matched again at admission) and the request is queued again; the id is
 * then dead. Until then the request stays in WAITING_KV (never planned).
 * For an arrival given up (deadline passed, request aborted or drained)
 * the group's blocks are freed now and landed_blocks, once checked, is
 * ignored. Each group reports once. Not thread-safe (the scheduler's
 * thread).
 * Errors: KVRT_ERR_INVALID_ARG (NULL sched, group out of range,
 * landed_blocks above the group's block count, given up or not),
 * KVRT_ERR_UNKNOWN_REQUEST
 * (an unknown or ended arrival), KVRT_ERR_BAD_STATE (the group has
 * reported already). Nothing changes on error.
 */
kvrt_status_t kvrt_arrival_group_complete(kvrt_sched_t *sched, kvrt_arrival_id_t arrival,
                                          uint32_t group, uint32_t landed_blocks);

/*
 * kvrt_arrival_complete - ends an arrival: landed_blocks of its blocks,
 * counted from its first, hold valid K/V (all of them: success; fewer: it
 * failed after those; 0: nothing usable). For a request still waiting for
 * it, those tokens become computed (at most the arrival's num_tokens) and
 * the request is queued again; the rest of its blocks are freed. For an
 * arrival given up (deadline passed, request aborted or drained) its blocks
 * are freed now and landed_blocks, once checked, is ignored. The id is
 * dead afterwards.
 * With several cache groups it reports every group that has not reported
 * (kvrt_arrival_group_complete) at once, and landed_blocks must be 0
 * (nothing more landed: the usual way to give an arrival up).
 * Errors: KVRT_ERR_INVALID_ARG (NULL sched, landed_blocks above the
 * arrival's block count, or not 0 with several groups; given up or not),
 * KVRT_ERR_UNKNOWN_REQUEST (an unknown or already completed arrival id).
 * Nothing changes on error.
 */
kvrt_status_t kvrt_arrival_complete(kvrt_sched_t *sched, kvrt_arrival_id_t arrival,
                                    uint32_t landed_blocks);

/* ---- steps --------------------------------------------------------------- */

typedef enum kvrt_plan_kind {
    KVRT_PLAN_PREFILL = 0, /* a prompt chunk (or recomputation) */
    KVRT_PLAN_DECODE = 1,  /* one token */
    KVRT_PLAN_SPEC = 2     /* one token and num_drafts drafts to verify */
} kvrt_plan_kind_t;

/*
 * One scheduled sequence. Frozen: it is an array element of the plan that
 * engines index directly, so its size is part of the ABI and never
 * changes. New per-sequence plan data come as new parallel arrays in
 * kvrt_batch_plan_t (as seq_lens and row_index do).
 */
typedef struct kvrt_plan_seq {
    kvrt_seq_id_t id;
    uint64_t user_tag;
    uint32_t kind;                /* kvrt_plan_kind_t */
    uint32_t num_new_tokens;      /* query length */
    uint32_t num_computed_tokens; /* context already in the KV cache */
    uint32_t num_drafts;          /* SPEC: drafts, the last num_drafts queries */
    uint32_t sample;              /* 1: the engine samples (1 + num_drafts
                                     positions for SPEC); 0: a prefill chunk
                                     that is not the last */
    uint32_t row;                 /* this sequence's row in block_rows */
} kvrt_plan_seq_t;

/*
 * One cache group's part of a plan (kvrt_sched_create_groups). Frozen: an
 * array element. Rows are indexed like block_rows (a request's row number
 * is the same in every group; rows_changed covers every group).
 */
typedef struct kvrt_plan_group {
    uint32_t tokens_per_block;
    uint32_t sliding_window;        /* 0: full attention */
    const int64_t *slot_mapping;    /* [num_tokens], plan order */
    const int32_t *block_rows;      /* [num_rows][row_stride]; entries of
                                       blocks out of the window are
                                       KVRT_NULL_BLOCK */
    uint32_t row_stride;
    uint32_t num_copies;
    const kvrt_block_copy_t *copies;
    const int32_t *block_table_offsets; /* NULL unless csr_block_tables */
    const int32_t *block_table_ids;
} kvrt_plan_group_t;

/*
 * The batch plan: owned by the scheduler, valid until the next step after
 * its commit (or destroy); only the library allocates it, so new fields are appended at
 * its end without breaking callers. All arrays are in plan order (sequence i's tokens are
 * [query_start_loc[i], query_start_loc[i + 1])):
 *
 *   seqs[num_seqs]             per sequence, as above
 *   query_start_loc[num_seqs+1] int32 CSR offsets of each query
 *   seq_lens[num_seqs]         int32 computed + new tokens (attention context)
 *   input_tokens[num_tokens]   token ids to feed: the prompt chunk, or the
 *                              last sampled token then the drafts
 *   positions[num_tokens]      int32 position of each token in its sequence
 *   slot_mapping[num_tokens]   int64 KV slot of each new token
 *                              (block * tokens_per_block + offset)
 *   copies[num_copies]         block copies to run before the step
 *   row_index[num_seqs]        = seqs[i].row, int32, for a gather
 *   preempted[num_preempted]   sequences preempted by this step (the engine
 *                              drops any per-sequence state it keeps)
 *
 * Block tables come as persistent padded rows: block_rows is
 * [max_seqs][row_stride] int32, row r holding the blocks of the running
 * sequence that owns it, padded with KVRT_NULL_BLOCK past them (which may
 * go past seq_lens by the blocks rejected drafts left, see speculation). A
 * sequence keeps its row from admission to preemption or end, and only the
 * entries that change are written (a new block, blocks a window or the
 * pressure order gives back, a rollback's truncation on several groups;
 * docs/scheduler.md), so rebuilding costs nothing; an engine mirroring
 * rows on the device applies the same changes (rows_changed lists the rows
 * touched since the last plan that was not empty, so an empty plan's rows
 * are listed again by the next one; each list stays intact while its plan
 * is in flight). With
 * csr_block_tables, block_table_offsets[num_seqs+1] and block_table_ids
 * also give each planned sequence's blocks as CSR, rebuilt every step;
 * when their buffer cannot grow (no memory) the step leaves them NULL
 * and logs a warning rather than fail: the rows hold the same blocks.
 */
typedef struct kvrt_batch_plan {
    uint64_t step;                 /* step number, passed back in the commit */
    uint64_t now_ns;               /* as passed to the step */
    uint32_t num_seqs;
    uint32_t num_tokens;
    uint32_t num_prefill_seqs;
    uint32_t num_decode_seqs;      /* DECODE and SPEC */
    uint32_t num_prefill_tokens;
    uint32_t num_draft_tokens;     /* in SPEC entries */
    uint32_t max_seq_len;          /* largest seq_lens entry */
    uint32_t tokens_per_block;
    const kvrt_plan_seq_t *seqs;
    const int32_t *query_start_loc;
    const int32_t *seq_lens;
    const int32_t *input_tokens;
    const int32_t *positions;
    const int64_t *slot_mapping;
    const int32_t *row_index;
    const int32_t *block_rows;
    uint32_t row_stride;           /* int32 entries per row */
    uint32_t num_rows;             /* max_seqs */
    const int32_t *rows_changed;
    uint32_t num_rows_changed;
    const int32_t *block_table_offsets; /* NULL unless csr_block_tables */
    const int32_t *block_table_ids;
    const kvrt_block_copy_t *copies;
    uint32_t num_copies;
    uint32_t num_preempted;
    const kvrt_seq_id_t *preempted;
    /* Cache groups: 1 unless the scheduler was made by
     * kvrt_sched_create_groups. groups[0] repeats group 0's fields above. */
    uint32_t num_groups;
    const kvrt_plan_group_t *groups;
} kvrt_batch_plan_t;

/*
 * kvrt_sched_step - forms the next batch (policies above) at time now_ns
 * and points *plan_out at it. A plan with num_seqs > 0 must be committed
 * (kvrt_sched_commit); an empty plan needs no commit. With
 * max_plans_in_flight 1 (the default) each step needs the previous plan
 * committed. With 2 (asynchronous scheduling) a step may come while one
 * plan is uncommitted; it plans as if that plan had committed with one
 * token per sampling entry and no accepted draft:
 *   - a sequence whose uncommitted entry samples decodes with input token
 *     KVRT_TOKEN_PLACEHOLDER (the engine substitutes the token it sampled
 *     for it) at the next position; it gets no drafts (engine drafts wait
 *     for a later step), and is not planned
 *     when that token will reach its length limit. So a request the
 *     engine keeps in every plan (two plans always in flight) never
 *     verifies drafts: speculative decoding needs steps taken with the
 *     previous plan committed (for example one plan in flight while
 *     drafts are pending);
 *   - a sequence whose uncommitted entry verifies drafts (SPEC) is not
 *     planned until that commit (its length is unknown);
 *   - a prefill continues with its next chunk;
 *   - a request in an uncommitted plan is never preempted: when the victim
 *     the policy picks is one, the sequence in need waits for a later step.
 * Plans are committed in step order. A request that ends at a commit while
 * a later plan holds it stays in that plan: the engine ignores its output
 * (its end is drained) and its blocks are freed when that plan commits.
 * The plan stays valid until it is committed and the step after (or
 * destroy). Requests may end during a step (FAILED, see preemption); drain
 * them.
 * Errors: KVRT_ERR_INVALID_ARG (NULL), KVRT_ERR_BAD_STATE
 * (max_plans_in_flight plans are uncommitted; nothing changes).
 */
kvrt_status_t kvrt_sched_step(kvrt_sched_t *sched, uint64_t now_ns,
                              const kvrt_batch_plan_t **plan_out);

enum kvrt_commit_field {
    KVRT_COMMIT_ACCEPTED = 1u << 0, /* num_accepted */
    KVRT_COMMIT_DRAFTS = 1u << 1    /* num_next_drafts, next_drafts */
};

/*
 * The engine's results for one plan. Sequence i of the plan contributes
 * tokens only when seqs[i].sample is 1: 1 + num_accepted[i] tokens (the
 * accepted drafts, equal to the drafts, then the bonus token); without
 * KVRT_COMMIT_ACCEPTED every num_accepted is 0. tokens holds them in plan
 * order, num_tokens in all.
 *
 * With KVRT_COMMIT_DRAFTS the commit also carries the draft tokens the
 * engine proposes for each sequence's next step (a draft model runs right
 * after verification, so they are at hand): num_next_drafts[i] tokens,
 * 0..max_draft_tokens, taken in plan order from next_drafts (their
 * concatenation), exactly as kvrt_sched_set_drafts would set them once the
 * commit has applied. Only sampling entries may carry drafts; those of a
 * request that ends at this commit are dropped. Nothing is retained after
 * the call. step, num_seqs, num_tokens and tokens are always read, the
 * rest by field_mask; the struct grows by appending fields with new bits.
 */
typedef struct kvrt_commit {
    uint64_t field_mask;
    uint64_t step;                 /* plan->step */
    uint32_t num_seqs;             /* plan->num_seqs */
    uint32_t num_tokens;           /* length of tokens */
    const int32_t *tokens;
    const uint32_t *num_accepted;  /* [num_seqs], 0..seqs[i].num_drafts */
    const uint32_t *num_next_drafts; /* [num_seqs], KVRT_COMMIT_DRAFTS */
    const int32_t *next_drafts;      /* sum(num_next_drafts) tokens */
} kvrt_commit_t;

/*
 * kvrt_sched_commit - applies the sampled tokens of the oldest uncommitted
 * plan (plans commit in step order): the
 * computed prefix grows by the planned tokens (minus rejected drafts, whose
 * slots are rolled back), sampled tokens are appended, newly full blocks go
 * into the prefix cache, stop conditions end requests; next drafts, when
 * given, are set. All or nothing: every entry is checked before anything
 * changes.
 * Errors: KVRT_ERR_INVALID_ARG (NULL, unknown field bits, a negative token
 * or next draft, an accepted token that differs from its draft, NULL
 * num_next_drafts, NULL next_drafts with drafts), KVRT_ERR_NO_STEP (no
 * uncommitted plan, or step does not name the oldest), KVRT_ERR_TOKEN_COUNT
 * (num_seqs differs from the plan, an accepted count above the entry's
 * drafts or on a non-sampling entry, num_tokens not the sum the plan and
 * counts give, next drafts above max_draft_tokens or on a non-sampling
 * entry), KVRT_ERR_UNSUPPORTED (next drafts with speculation off).
 */
kvrt_status_t kvrt_sched_commit(kvrt_sched_t *sched, const kvrt_commit_t *commit);

/* ---- statistics ---------------------------------------------------------- */

/* Draft positions counted in spec_proposed_at / spec_accepted_at. */
#define KVRT_SCHED_DRAFT_POSITIONS KVRT_SCHED_MAX_DRAFT
/* Admissions in the recent window of prefix_hit_rate_window. */
#define KVRT_SCHED_HIT_WINDOW 1024u

/*
 * Counters since creation, each also a read-only ctl node "sched.<N>.<field>"
 * (u64; the ratios are doubles; array element j is "<field>.<j>").
 * Grows by appending fields (see kvrt_seq_info_sized).
 */
typedef struct kvrt_sched_stats {
    uint64_t steps;              /* non-empty plans */
    uint64_t scheduled_tokens;   /* query tokens, all plans */
    uint64_t prefill_tokens;
    uint64_t decode_tokens;      /* DECODE and SPEC entries, drafts included */
    uint64_t preemptions;
    uint64_t added;
    uint64_t finished_length;
    uint64_t finished_stop;
    uint64_t aborted;
    uint64_t failed;
    uint64_t waiting;            /* now: WAITING + PREEMPTED */
    uint64_t running;            /* now: RUNNING (a request ended while a
                                    plan holds it is not, though its row and
                                    place count until that plan commits) */
    uint64_t ended_undrained;    /* now */
    uint64_t output_tokens;      /* committed */
    uint64_t prompt_tokens;      /* of admitted requests, at first admission */
    uint64_t prefix_hit_tokens;  /* adopted from the cache, all admissions */
    uint64_t prefix_query_tokens;/* tokens offered to the cache at admissions */
    uint64_t deadline_misses;    /* first tokens after their deadline */
    uint64_t budget_bound_steps; /* steps that left work for lack of budget */
    uint64_t spec_proposed;      /* drafts verified */
    uint64_t spec_accepted;
    uint64_t spec_verifications; /* SPEC entries committed */
    uint64_t spec_backoff_tokens;/* drafts dropped to fit the budget */
    uint64_t step_cpu_ns;        /* time spent inside step, all calls */
    uint64_t commit_cpu_ns;      /* time spent inside commit */
    uint64_t awaiting_kv;        /* now: requests in WAITING_KV */
    uint64_t arrivals;           /* kvrt_seq_await_kv calls that succeeded */
    uint64_t arrived_tokens;     /* tokens that landed and became computed */
    uint64_t arrivals_failed;    /* completed with fewer blocks than asked */
    uint64_t arrivals_expired;   /* given up at their deadline */
    /* Draft position j (0 = the first draft): verified, and accepted. The
     * acceptance at j is accepted_at[j] / proposed_at[j]; a draft is
     * accepted only if every draft before it was. */
    uint64_t spec_proposed_at[KVRT_SCHED_DRAFT_POSITIONS];
    uint64_t spec_accepted_at[KVRT_SCHED_DRAFT_POSITIONS];
    /* Prefix-cache hits over the last KVRT_SCHED_HIT_WINDOW admissions that
     * queried the cache (hit tokens / tokens offered), beside the total
     * rate prefix_hit_tokens / prefix_query_tokens. */
    uint64_t window_hit_tokens;
    uint64_t window_query_tokens;
    double spec_acceptance;      /* spec_accepted / spec_proposed */
    double spec_mean_accepted;   /* spec_accepted / spec_verifications */
    double prefix_hit_rate;      /* prefix_hit_tokens / prefix_query_tokens */
    double prefix_hit_rate_window; /* window_hit_tokens / window_query_tokens */
    /* Steps a request came up for admission and waited for blocks another
     * request is computing (shared_prefill_min_tokens): one per request and
     * step. Not in KVRT_SCHED_STATS_SIZE_1_0. */
    uint64_t shared_prefill_waits;
} kvrt_sched_stats_t;

#define KVRT_SCHED_STATS_SIZE_1_0 544u

/*
 * kvrt_sched_stats_sized - a copy of the counters, the first stats_size
 * bytes (see kvrt_seq_info_sized). Errors: KVRT_ERR_INVALID_ARG (NULL,
 * stats_size below KVRT_SCHED_STATS_SIZE_1_0).
 */
kvrt_status_t kvrt_sched_stats_sized(const kvrt_sched_t *sched, kvrt_sched_stats_t *stats_out,
                                     size_t stats_size);

/* kvrt_sched_stats - kvrt_sched_stats_sized() with this header's size. */
static inline kvrt_status_t kvrt_sched_stats(const kvrt_sched_t *sched,
                                             kvrt_sched_stats_t *stats_out)
{
    return kvrt_sched_stats_sized(sched, stats_out, sizeof(*stats_out));
}

#ifdef __cplusplus
}
#endif

#endif /* KVRT_SCHED_H */
