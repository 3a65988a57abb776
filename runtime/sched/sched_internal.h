/*
 * sched_internal.h - the scheduler's parts, shared by the files of
 * runtime/sched only: requests and the waiting heap (request.c), the step
 * (step.c), the commit (commit.c), the n-gram proposer (ngram.c) and
 * creation, statistics and ctl nodes (sched.c).
 *
 * Layout for speed: requests live in one array of slots (no per-request
 * heap objects on the hot path); the running set is an array of slot
 * indices kept in admission order; the waiting queue is a binary heap of
 * small keyed entries, so comparing two requests never dereferences them.
 */
#ifndef KVRT_SCHED_INTERNAL_H
#define KVRT_SCHED_INTERNAL_H

#include <stddef.h>
#include <string.h>

#include "cache/hooks.h"
#include "core/arena.h"
#include "core/core.h"
#include "kv/pool_internal.h"
#include "kvrt/sched.h"

#define SCHED_NONE UINT32_MAX
/* Tokens in a request's line of recent tokens (seq_t.recent): 64 bytes. */
#define SCHED_RECENT 16u
/* How many requests ahead the step and commit loops prefetch. */
#define SCHED_PREFETCH 8u
/* Running requests from which lines a step reads only sometimes (a
 * speculating request's second line and row after a rollback) are fetched
 * ahead. A step touches about five lines a request, 5 MiB at 16K requests:
 * from there they come from memory rather than a cache, and fetching them
 * early saved 10-20% of a speculating step; at 4K and 8K requests it
 * saved nothing and cost its instructions (docs/benchmarks.md). */
#define SCHED_DEEP_RUNNING 16384u

/* Per-request n-gram index: hash chains over the positions of the request's
 * tokens, keyed by the ngram_min tokens ending at each position (the zlib
 * match-finder shape). head[h] is the latest position with hash h, prev[p]
 * the previous position sharing p's hash; -1 ends a chain. */
typedef struct ngram_index {
    int32_t *head;
    int32_t *prev;       /* [capacity] */
    uint32_t head_mask;  /* head has head_mask + 1 entries */
    uint32_t indexed;    /* positions [0, indexed) are in the chains */
} ngram_index_t;

/* One draft in seq_t's acceptance sums: KVRT_SCHED_MAX_DRAFT of them fit
 * in 16 bits. */
#define SCHED_ACCEPT_ONE 2048u
_Static_assert(KVRT_SCHED_MAX_DRAFT * SCHED_ACCEPT_ONE <= UINT16_MAX,
               "acceptance sums outgrow 16 bits");

typedef struct seq {
    /* ---- hot: the first 64 bytes are all a decode step and its commit
     * read or write but the line of recent tokens (the array is 64-byte
     * aligned) ---- */
    uint32_t generation;    /* odd while the id is live */
    uint8_t state;          /* kvrt_seq_state_t */
    uint8_t in_plan;        /* bit k: in the uncommitted plan of plan slot k */
    uint8_t in_prefill;     /* admitted, not yet sampled since admission */
    uint8_t cache_flags;    /* enum kvrt_seq_cache_flags */
    uint8_t release_at_commit; /* ended while in the plan: free at commit */
    uint8_t draft_len;      /* adaptive draft length (1..k) */
    uint8_t engine_drafts;  /* draft[] tokens set by the engine for next step */
    uint8_t end_reason;     /* kvrt_seq_end_reason_t */
    uint32_t num_tokens;    /* prompt + output */
    uint32_t computed;      /* tokens whose K/V is in the table */
    uint32_t max_tokens;    /* num_tokens limit: prompt + max_new, capped; the
                               token array has sched_token_room() entries */
    uint32_t row;           /* block_rows row, SCHED_NONE when none */
    uint8_t num_stop;
    uint8_t stop_set;       /* 1 + its index in the scheduler's shared
                               stop_sets, or 0: its own stop area
                               (sched_stop_area) */
    uint8_t pending_samples;/* entries of uncommitted plans that sample: each
                               assumes one placeholder token (async steps) */
    uint8_t pending_spec;   /* an uncommitted plan verifies its drafts */
    uint64_t user_tag;
    /* The plan's length (computed + ahead) minus the pool's table's.
     * Positive: tokens appended inside blocks the request holds that the
     * table has not been told yet (told by the next append past them:
     * crossing.c; with several groups or a window, every group's table:
     * groups.c). Negative (one group only): rejected drafts' positions,
     * which the table still holds, and their blocks with them, for the
     * request's next tokens (commit.c). */
    int32_t lag;
    /* Tokens of uncommitted plans' entries, not yet in computed: the next
     * plan starts at computed + ahead. */
    uint32_t ahead;
    /* [sched_token_room(max_tokens)], then the stop area
     * (sched_stop_area); complete below num_tokens & ~15, the rest in
     * recent (sched_seq_tokens) */
    int32_t *token_array;
    /* Copies that spare a decode step two scattered lines: the last token
     * (at num_tokens - 1, the next input) and the block holding the
     * plan's last position, computed + ahead - 1 (group 0; the tail block
     * the fast path writes into: the row's last entry unless the table
     * holds blocks past it, lag < 0). */
    int32_t last_token;
    int32_t tail_block;

    /* ---- second line: speculation, prefix caching, the slow paths ---- */
    uint32_t row_blocks;    /* entries of the row in use */
    uint32_t running_pos;   /* index in sched->running, SCHED_NONE when none */
    uint32_t prompt_len;
    int32_t priority;
    /* Per-draft acceptance, as two decaying sums over verifications, in
     * units of 1/SCHED_ACCEPT_ONE: drafts accepted, and drafts tried (the
     * accepted ones and the first rejected, the only one a rejection tells
     * about). Each sum is at most max_draft_tokens. */
    uint16_t accept_hits, accept_tries;
    uint32_t num_inserted;  /* table blocks [0, num_inserted) offered to the cache */
    kvrt_table_id_t table;  /* 0 when the request holds no blocks */
    uint64_t spec_proposed;
    uint64_t spec_accepted;
    /* Beside the counts the insert batch reads, so that a request without
     * keys (SCHED_CACHE_NO_KEYS) offers a block reading no line of its
     * slot but the first two (full_blocks.c). */
    kvrt_block_hash_t *hashes; /* content hash of each full block, once known */
    uint32_t heap_pos;      /* index in sched->heap, SCHED_NONE when none */
    uint32_t num_hashed;    /* hashes[0, num_hashed) known */

    /* ---- third line: the engine's drafts for the next step, written by
     * kvrt_sched_set_drafts and read by the step (one line each) ---- */
    int32_t draft[KVRT_SCHED_MAX_DRAFT];

    /* ---- fourth line: the newest tokens, positions [num_tokens & ~15,
     * num_tokens), which token_array may not hold yet. A commit writes its
     * tokens here and the 16 of a line to token_array once they are all
     * known (commit.c), so that a decode writes into its request's own
     * lines, not into a page of its own: at 32K running requests their
     * token arrays span hundreds of MiB and every commit's write there
     * missed the TLB. Readers of token_array take it through
     * sched_seq_tokens(). ---- */
    int32_t recent[SCHED_RECENT];

    /* ---- cold ---- */
    kvrt_hash_keys_t keys;     /* points into salt and the allocation */
    uint32_t preemptions;
    uint32_t cached_tokens;
    uint8_t salt[KVRT_CACHE_SALT_MAX];
    ngram_index_t ngram;
    uint32_t next_free;     /* free-slot list link */
    uint32_t arrival;       /* its outstanding arrival, SCHED_NONE when none */
    uint32_t match_tokens;  /* prefix-cache hits of its last match, counted at
                               admission */
    uint32_t released;      /* group 0: leading table blocks released (out of
                               a sliding window) or holes (groups.c) */
    /* shared_prefill.c: while it waits for blocks another request computes,
     * that request (slot and id; share_id 0: none, cleared when it is
     * matched and when K/V is awaited), the block that request had reached
     * when last seen, and the full blocks their prompts share from the
     * start that a hit can use (whole hit units). */
    uint32_t share_slot;
    uint32_t share_from;
    uint32_t share_end;
    kvrt_seq_id_t share_id;
    bool landed;            /* its table holds K/V that arrived (arrival.c) */
    uint32_t landed_pos;    /* index in sched->landed_slots while landed */
    kvrt_status_t status;
    uint64_t deadline_ns;   /* UINT64_MAX without a deadline */
    uint64_t order;         /* arrival number: FCFS */
    uint64_t preempted_step;/* step that last preempted it */
    uint64_t admitted_ns;
    uint64_t first_token_ns;
    uint64_t end_ns;
    bool deadline_missed;
    bool counted_prompt;    /* prompt counted in stats at first admission */
    void *allocation;       /* hashes, tokens, stop area, mm items, ngram */
} __attribute__((aligned(64))) seq_t;
/* The layout the hot loops rely on: a plain decode's step and commit read
 * and write the first line only (and the commit its line of recent
 * tokens). */
_Static_assert(offsetof(seq_t, row_blocks) == 64, "seq_t's hot fields outgrew one cache line");
_Static_assert(offsetof(seq_t, draft) == 128 && sizeof(((seq_t *)0)->draft) == 64,
               "a request's drafts are one cache line");
_Static_assert(offsetof(seq_t, recent) == 192 && sizeof(((seq_t *)0)->recent) == 64,
               "a request's newest tokens are one cache line");
_Static_assert(offsetof(seq_t, hashes) / 64 == 1 && offsetof(seq_t, num_inserted) / 64 == 1,
               "the insert batch's fields share the second line (full_blocks.c)");
_Static_assert(offsetof(seq_t, heap_pos) <= 128, "seq_t's second line outgrew 64 bytes");

/* seq_t.cache_flags above the public kvrt_seq_cache_flags: the request was
 * added without hash keys (keys.field_mask 0), so hashing and inserting
 * its blocks takes NULL keys, the same keys to the cache, without reading
 * the line that holds them. */
#define SCHED_CACHE_NO_KEYS 0x80u
/* The request held K/V when the cache was reset (weights changed): none of
 * its blocks, those it fills later included (their attention read the old
 * K/V), is offered to the cache until it lets go of them all and
 * recomputes (sched_release). */
#define SCHED_CACHE_STALE 0x40u
/* What keeps a request's blocks out of the cache. */
#define SCHED_CACHE_NO_WRITE (KVRT_SEQ_CACHE_SKIP_WRITE | SCHED_CACHE_STALE)
_Static_assert((KVRT_SEQ_CACHE_SKIP_READ | KVRT_SEQ_CACHE_SKIP_WRITE |
                KVRT_SEQ_CACHE_DROP_LAST_HIT) < SCHED_CACHE_STALE,
               "an internal cache flag shares a bit with kvrt_seq_cache_flags");

static inline const kvrt_hash_keys_t *sched_seq_keys(const seq_t *q)
{
    return (q->cache_flags & SCHED_CACHE_NO_KEYS) ? NULL : &q->keys;
}

/* A request's state in cache group g >= 1 (group 0's is in seq_t: table,
 * row_blocks, released, num_hashed, num_inserted, hashes). */
typedef struct seq_group {
    kvrt_table_id_t table;
    int32_t tail_block;     /* the row's last entry, cached by groups.c for
                               appends inside it; 0 (the null block): unknown */
    uint32_t row_blocks;
    uint32_t released;
    uint32_t num_hashed;
    uint32_t num_inserted;
    kvrt_block_hash_t *hashes;
} seq_group_t;

/* Pointers to a request's state in one group, whichever group it is. */
typedef struct seq_gref {
    kvrt_table_id_t *table;
    uint32_t *row_blocks;
    uint32_t *released;
    uint32_t *num_hashed;
    uint32_t *num_inserted;
    kvrt_block_hash_t *hashes;
} seq_gref_t;

/* A waiting-queue entry: the ordering key, copied out of the request. */
typedef struct heap_entry {
    int32_t priority;
    uint32_t index;      /* slot */
    uint64_t deadline;   /* UINT64_MAX: none */
    uint64_t order;
} heap_entry_t;

/* One cache group's part of an arrival (arrival.c): blocks
 * [first_block, first_block + num_blocks) of the group's table. */
typedef struct arrival_group {
    kvrt_table_id_t table;  /* held for a given-up arrival, else 0 */
    uint32_t first_block;
    uint32_t num_blocks;
    uint32_t landed;        /* blocks reported landed; ARRIVAL_UNREPORTED until
                               the group reports */
} arrival_group_t;
#define ARRIVAL_UNREPORTED UINT32_MAX

/* An arrival of a request's prefix K/V (arrival.c). While the request
 * waits for it, the blocks are in the request's tables; once given up
 * (deadline, abort), the tables move here and each group's is freed when
 * that group reports. Group 0's part is here, groups 1 and up are in
 * sched->xarrivals. */
typedef struct arrival {
    uint32_t generation;    /* odd while the id is live */
    uint32_t seq;           /* request slot; SCHED_NONE once given up */
    uint32_t end_tokens;    /* the arrival's num_tokens */
    uint32_t next_free;
    uint32_t groups_left;   /* groups that have not reported */
    uint64_t deadline_ns;   /* UINT64_MAX: none */
    arrival_group_t group0;
} arrival_t;

/* A running decode's append past its tail block, deferred to the batch
 * that runs at the end of the decode pass (crossing.c). */
typedef struct sched_crossing {
    uint32_t slot;          /* request slot */
    uint32_t t0;            /* its first token in the plan */
    uint32_t c;             /* tokens in its table before the append */
    uint16_t n;             /* tokens appended: a decode's, 1 + drafts */
    uint16_t took;          /* blocks it takes: those past the row's */
} sched_crossing_t;
_Static_assert(1 + KVRT_SCHED_MAX_DRAFT <= UINT16_MAX && sizeof(sched_crossing_t) == 16,
               "a crossing record is a decode's: four records a line");
/* Crossings gathered before the batch runs: enough for the fetches of one
 * to overlap the work of others, few enough that the requests' lines read
 * while gathering are still cached when the batch runs. */
#define SCHED_CROSSINGS 256u
/* Requests gathered before the commit's insert batch runs. */
#define SCHED_INSERTS 256u
/* Fewer gathered records than this run without staged fetches: there is
 * too little to overlap for the stages to pay for themselves. */
#define SCHED_STAGE_MIN 8u

/* Plan arrays, sized at creation (max_seqs / max_batch_tokens). */
typedef struct plan_buffers {
    kvrt_plan_seq_t *seqs;
    uint32_t *slot_of;      /* request slot of each plan entry */
    int32_t *query_start_loc;
    int32_t *seq_lens;
    int32_t *row_index;
    int32_t *input_tokens;
    int32_t *positions;
    int64_t *slot_mapping;
    kvrt_block_copy_t *copies;
    uint32_t *copy_owner;   /* request slot of each copy */
    kvrt_seq_id_t *preempted;
    int32_t *csr_offsets;
    int32_t *csr_ids;
    uint32_t csr_capacity;
} plan_buffers_t;

/* A block a prefilling request computes, noted in one step for requests
 * sharing it to wait for (shared_prefill.c). */
typedef struct shared_key {
    kvrt_block_hash_t near; /* cheap key: what precedes the block, its first tokens */
    kvrt_block_hash_t run;  /* the key that decides, once run_known */
    uint32_t slot;          /* the request computing it */
    uint32_t block;         /* its index in that request */
    uint32_t epoch;         /* noted in the step of this epoch; 0: never */
    bool run_known;
} shared_key_t;

/* Most plans in flight (KVRT_SCHED_MAX_PLANS_IN_FLIGHT): plan slots. */
#define SCHED_PLAN_SLOTS KVRT_SCHED_MAX_PLANS_IN_FLIGHT

/* A cache group (kvrt_sched_create_groups). Group 0's pool, cache, block
 * size, rows and plan buffers are also s->pool, s->cache, s->rows and
 * s->bufs, which the single-group paths read; the per-plan-slot arrays
 * here serve groups 1 and up. */
typedef struct sched_group {
    kvrt_pool_t *pool;
    kvrt_cache_t *cache;
    kvrt_block_hash_t root;
    uint32_t tokens_per_block;
    uint32_t block_shift;
    uint32_t window;        /* sliding window in tokens; 0: full attention */
    /* Groups may share a pool (and its cache): owner is the first group
     * naming this group's pool, whose checks count every sharer's needs. */
    uint32_t owner;
    /* Hits are found block by block (kvrt_cache_lookup under `root`): a
     * window group, or a group sharing an earlier group's cache, whose
     * chains start at a root of their own. */
    bool lookup;
    /* The first group naming a cache on which every group finds its hits
     * by lookups: no kvrt_cache_match counts that cache's query, so this
     * group counts it at each admission (kvrt_cache_count_lookups). */
    bool counts_lookups;
    uint32_t row_stride;
    int32_t *rows;          /* [max_seqs][row_stride] */
    int32_t *match_blocks;  /* [row_stride]: hits of one admission */
    int64_t *slot_mapping[KVRT_SCHED_MAX_PLANS_IN_FLIGHT];
    kvrt_block_copy_t *copies[KVRT_SCHED_MAX_PLANS_IN_FLIGHT];
    uint32_t *copy_owner[KVRT_SCHED_MAX_PLANS_IN_FLIGHT];
    uint32_t num_copies[KVRT_SCHED_MAX_PLANS_IN_FLIGHT];
    int32_t *csr_offsets[KVRT_SCHED_MAX_PLANS_IN_FLIGHT];
    int32_t *csr_ids[KVRT_SCHED_MAX_PLANS_IN_FLIGHT];
    uint32_t csr_capacity[KVRT_SCHED_MAX_PLANS_IN_FLIGHT];
    uint64_t landed_blocks; /* blocks queued requests hold with K/V that
                               arrived (arrival.c) */
    /* The last admission's query of this group's cache, as the cache
     * counted it: taken back when the request then waits (groups that
     * match, and those that count lookups). */
    kvrt_cache_match_t admit_match;
} sched_group_t;

/* Rows changed since the last published plan. One buffer per plan slot
 * plus the one accumulating, so a plan's list stays intact while it is in
 * flight. */
typedef struct row_changes {
    int32_t *changed[SCHED_PLAN_SLOTS + 1];
    uint32_t num_changed[SCHED_PLAN_SLOTS + 1];
    uint32_t accumulating;  /* index of the buffer gathering changes */
    uint64_t *row_mark;     /* [max_seqs]: epoch a row was last listed in */
    uint64_t epoch;
} row_changes_t;

/* A stop set that requests share: the set most requests of a model
 * carry (its EOS tokens), for requests without min_tokens, whose stops
 * count from their first output. Kept until the scheduler is destroyed; at
 * most SCHED_STOP_SETS distinct sets, later ones stay per request. */
#define SCHED_STOP_SETS 16u
typedef struct sched_stop_set {
    uint32_t num;
    int32_t tokens[KVRT_SEQ_MAX_STOP_TOKENS];
} __attribute__((aligned(64))) sched_stop_set_t; /* a set's count and first 15 tokens: one line */
_Static_assert(KVRT_SEQ_MAX_STOP_TOKENS <= UINT8_MAX && SCHED_STOP_SETS < UINT8_MAX,
               "num_stop and stop_set fit a byte");

struct kvrt_sched {
    kvrt_owned_t owned;
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool;
    kvrt_cache_t *cache;
    uint32_t index;             /* N of "sched.<N>" */
    kvrt_block_hash_t root;     /* the cache's root hash */

    /* parameters */
    uint32_t max_batch_tokens;
    uint32_t max_seqs;
    uint32_t chunk_tokens;
    bool use_watermark;
    bool adaptive_draft;
    bool csr_tables;
    uint32_t max_requests;
    uint32_t first_generation;  /* every slot's first generation word: this
                                   scheduler's tag and a random count (ids) */
    uint32_t max_seq_tokens;
    uint32_t max_draft;
    uint32_t ngram_min;         /* 0: proposer off */
    uint32_t ngram_max;
    uint32_t tokens_per_block;
    uint32_t block_shift;
    /* Tokens a decode may add inside its tail block without the slow path:
     * tokens_per_block, or 0 when several groups or a window need every
     * append seen (groups.c). */
    uint32_t fast_tail;
    uint32_t pool_blocks;       /* usable blocks (num_blocks - 1) */
    /* draft_threshold[j]: the least acceptance p with p^j >= 1/4 */
    float draft_threshold[KVRT_SCHED_MAX_DRAFT + 1];

    /* requests */
    seq_t *seqs;                /* [max_requests] */
    uint32_t free_head;
    uint32_t live;              /* slots in use */
    uint64_t next_order;

    heap_entry_t *heap;         /* [max_requests] */
    uint32_t heap_size;
    uint64_t waiting_tokens;    /* sum of num_tokens over the heap */
    uint32_t pinned;            /* waiting request holding its prefix hits
                                   (see step.c), SCHED_NONE when none */
    /* A prefill whose multimodal item found no room in a step's budget
     * left (its id; 0: none), and the tokens its chunk needs: the next
     * step holds them for it (step.c, hold_for_item). */
    kvrt_seq_id_t item_waiting;
    uint32_t item_need;

    uint32_t *running;          /* [max_seqs] slot indices, admission order */
    /* [max_seqs] kvrt_sched_set_drafts: the requests one call has given
     * drafts so far, whose count it takes back if it is refused. Only
     * running requests take drafts, each once a call: max_seqs. */
    uint32_t *drafts_published;
    uint32_t num_running;       /* entries, some possibly stale */
    uint32_t running_live;      /* RUNNING requests, and ENDED ones whose
                                   release waits for a plan's commit */
    uint32_t running_ended;     /* those ENDED ones (not in stats.running) */
    uint32_t running_prefill;   /* RUNNING and in_prefill */
    uint32_t running_holes;     /* entries released (SCHED_NONE), not yet
                                   compacted away */

    arrival_t *arrivals;        /* [max_requests] */
    uint32_t arrival_free;      /* free-list head */
    uint32_t num_awaiting;      /* requests in WAITING_KV */
    uint32_t num_given_up;      /* given-up arrivals still holding blocks */
    uint32_t num_landed;        /* queued requests holding arrived K/V */
    uint32_t *landed_slots;     /* [max_requests]: those requests, unordered
                                   (their blocks: groups[g].landed_blocks) */
    uint64_t next_deadline;     /* no awaiting deadline before it */

    uint32_t *ended;            /* ring of slots with an undrained end */
    uint32_t ended_head;
    uint32_t ended_count;
    void **drained_memory;      /* allocations freed at the next drain */
    uint32_t num_drained_memory;

    /* rows */
    int32_t *rows;              /* [max_seqs][row_stride] */
    uint32_t row_stride;
    uint32_t *free_rows;        /* stack */
    uint32_t num_free_rows;

    /* The plans. plan/buf point into plans/bufs: at the slot being built
     * during a step, the slot being committed during a commit, else the
     * last one built. Uncommitted non-empty plans form a FIFO of
     * num_pending slots starting at pending_head (commits apply in order). */
    kvrt_batch_plan_t *plan;
    plan_buffers_t *buf;
    uint8_t plan_bit;           /* 1 << the slot plan points at */
    kvrt_batch_plan_t plans[SCHED_PLAN_SLOTS];
    plan_buffers_t bufs[SCHED_PLAN_SLOTS];
    uint32_t max_in_flight;     /* 1: synchronous steps */
    /* max_in_flight > 1. Synchronous schedulers keep ahead, pending_samples
     * and pending_spec at 0 (a plan is committed before the next is
     * built), so their step and commit skip that bookkeeping. */
    bool async;
    uint32_t num_pending;
    uint32_t pending_head;
    uint64_t step_count;        /* numbers plans */
    row_changes_t rc;
    int32_t *match_blocks;      /* [row_stride]: prefix hits of one admission */

    /* Deferred crossings (crossing.c) and the blocks they may take, out of
     * crossing_room, what the pool can certainly give (free blocks when
     * the batch opened, idle ones added once the free ones run short). */
    sched_crossing_t crossings[SCHED_CROSSINGS];
    uint32_t num_crossings;
    uint32_t crossing_blocks;
    uint32_t crossing_room;
    bool crossing_idle_counted; /* free blocks fell short of the batch's needs (idle
                                   cached ones added to the room, without a sink) */
    /* Requests whose full blocks the commit's insert batch offers to the
     * prefix cache (full_blocks.c). */
    uint32_t inserts[SCHED_INSERTS];
    uint32_t num_inserts;
    /* The caches' resets seen (kvrt_cache_resets, summed over the groups):
     * a new one marks the requests holding K/V stale (full_blocks.c). */
    uint64_t cache_resets;

    /* Prompts sharing a prefix (shared_prefill.c): share_blocks (0: off)
     * blocks must be shared for a request to wait; the keys noted this
     * step; the requests waiting in it, out of the heap until admission
     * ends, and the tokens of those that waited in the last step (the
     * prefill demand of the next step's drafts leaves them out). */
    uint32_t share_blocks;
    uint32_t shared_mask;
    shared_key_t *shared;       /* [shared_mask + 1] */
    uint32_t shared_epoch;
    uint32_t shared_notes;      /* entries noted in shared_step */
    uint64_t shared_step;       /* the step shared_epoch's keys were noted in */
    uint32_t *share_waiting;    /* [max_seqs] slots */
    uint32_t num_share_waiting;
    uint64_t share_waited_tokens;

    /* The last KVRT_SCHED_HIT_WINDOW admissions' (hit, offered) tokens. */
    struct { uint32_t hit, offered; } *window;
    uint32_t window_next;

    /* Verifications by draft count and by accepted count: position j was
     * proposed by those with more than j drafts, accepted by those with
     * more than j accepted (one increment each per entry at commit). The
     * stats' spec_verifications, spec_proposed and spec_accepted are their
     * sums, taken when read (stats.spec_* stay 0). */
    uint64_t spec_by_drafts[KVRT_SCHED_MAX_DRAFT + 1];
    uint64_t spec_by_accepted[KVRT_SCHED_MAX_DRAFT + 1];

    /* Cache groups: groups[0] mirrors pool/cache/rows above. hybrid: more
     * than one group, or a sliding window (the paths of groups.c). */
    uint32_t num_groups;
    bool hybrid;
    uint32_t hit_unit;          /* a prefix hit is a multiple of it (the
                                   largest block size) */
    sched_group_t groups[KVRT_SCHED_MAX_GROUPS];
    seq_group_t *xgroups;       /* [max_requests][num_groups - 1] */
    arrival_group_t *xarrivals; /* [max_requests][num_groups - 1] */
    kvrt_plan_group_t plan_groups[KVRT_SCHED_MAX_PLANS_IN_FLIGHT][KVRT_SCHED_MAX_GROUPS];

    kvrt_arena_t arena;         /* request memory (core/arena.c) */
    /* Stop sets requests share (sched_stop_set_t): each kept once, on
     * lines every commit reads, instead of a line per request. */
    sched_stop_set_t stop_sets[SCHED_STOP_SETS];
    uint32_t num_stop_sets;

    kvrt_sched_stats_t stats;
};

/* ---- ids ------------------------------------------------------------------- */

/*
 * An id is a slot's generation word in its high 32 bits and index + 1 in
 * its low 32. The word counts in its low 25 bits (odd while the id is
 * live) and carries a tag in the rest: bits 25-30 a number of the
 * scheduler (six bits of a count of schedulers created in the process),
 * bit 31 set for an arrival. So an id of another scheduler, or an
 * arrival's given as a request's or the other way round, matches no
 * slot's word and is refused as unknown, at no cost to the lookup. Two
 * schedulers created a multiple of 64 apart share a tag; each starts its
 * counts at a random even point (kvrt_generation_start), so an id of one
 * matches a slot of the other only if their counts happen to meet: an
 * engine that recreates its scheduler every episode and keeps a stale
 * id does not reach a request of a later one.
 */
#define SCHED_GEN_COUNT ((1u << 25) - 1u)
#define SCHED_GEN_TAG_SHIFT 25u
#define SCHED_GEN_ARRIVAL (1u << 31)

/* The generation word after g: the count advances, the tag stays. */
static inline uint32_t sched_next_generation(uint32_t g)
{
    return (g & ~SCHED_GEN_COUNT) | ((g + 1u) & SCHED_GEN_COUNT);
}

static inline kvrt_seq_id_t sched_make_id(uint32_t index, uint32_t generation)
{
    return ((uint64_t)generation << 32) | (uint64_t)(index + 1);
}

static inline seq_t *sched_lookup(const kvrt_sched_t *s, kvrt_seq_id_t id)
{
    uint32_t index = (uint32_t)id - 1;
    uint32_t generation = (uint32_t)(id >> 32);
    if (KVRT_UNLIKELY(index >= s->max_requests || !(generation & 1)))
        return NULL;
    seq_t *q = &s->seqs[index];
    return q->generation == generation ? q : NULL;
}

static inline uint32_t sched_slot(const kvrt_sched_t *s, const seq_t *q)
{
    return (uint32_t)(q - s->seqs);
}

static inline kvrt_seq_id_t sched_id(const kvrt_sched_t *s, const seq_t *q)
{
    return sched_make_id(sched_slot(s, q), q->generation);
}

/* in_plan bit of the plan slot s->plan points at (being built or committed). */
static inline uint8_t sched_plan_bit(const kvrt_sched_t *s)
{
    return s->plan_bit;
}

/* Refreshes q->tail_block after group 0's row changed length or tail. */
static inline void sched_tail_update(const kvrt_sched_t *s, seq_t *q)
{
    q->tail_block =
        q->row_blocks ? s->rows[(size_t)q->row * s->row_stride + q->row_blocks - 1] : 0;
}

/* A request with stop tokens of its own keeps, after its token capacity,
 * the first num_tokens at which a stop token ends it (prompt_len +
 * min_tokens + 1, saturated), then its num_stop stop tokens: the commit's
 * stop check reads that line and the request's first, not its second. A
 * request whose stop set is shared (stop_set) has no stop area. */
typedef struct stop_area {
    uint32_t from;
    int32_t tokens[];
} stop_area_t;

/* Entries of a token array for a capacity of max_tokens: room for the
 * line of recent tokens whole at any num_tokens <= max_tokens, so that it
 * is always written back as one 64-byte copy. */
static inline uint32_t sched_token_room(uint32_t max_tokens)
{
    return (max_tokens + SCHED_RECENT) & ~(SCHED_RECENT - 1);
}

static inline stop_area_t *sched_stop_area(const seq_t *q)
{
    return (stop_area_t *)(q->token_array + sched_token_room(q->max_tokens));
}

/* q's token array, complete for positions [0, end), end <= num_tokens:
 * the line of recent tokens is written back when end reaches past the
 * last full line (its entries past num_tokens are the array's room; the
 * tokens stay in recent too, so no state changes). */
static inline const int32_t *sched_seq_tokens(const seq_t *q, uint32_t end)
{
    const uint32_t line = q->num_tokens & ~(SCHED_RECENT - 1);
    if (end > line)
        memcpy(q->token_array + line, q->recent, sizeof(q->recent));
    return q->token_array;
}

/* Points s->plan and s->buf at plan slot k. */
static inline void sched_use_slot(kvrt_sched_t *s, uint32_t k)
{
    s->plan = &s->plans[k];
    s->buf = &s->bufs[k];
    s->plan_bit = (uint8_t)(1u << k);
}

/* Short runs on the per-token hot paths (a decode writes 1 entry, a k = 4
 * speculation 5): whole vectors instead of a loop, when the destination
 * has room for 8 entries (the ones past n are scratch that later entries
 * overwrite). */
typedef int32_t sched_v4i32 __attribute__((vector_size(16)));
typedef int64_t sched_v2i64 __attribute__((vector_size(16)));

/* out[k] = v + k for k < n; room: entries writable from out. */
static inline void sched_iota32(int32_t *out, size_t room, int32_t v, uint32_t n)
{
    if (KVRT_LIKELY(n == 1)) { /* a plain decode */
        out[0] = v;
        return;
    }
    if (KVRT_LIKELY(n <= 8 && room >= 8)) {
        sched_v4i32 lo = {v, v + 1, v + 2, v + 3}, hi = lo + 4;
        memcpy(out, &lo, sizeof(lo));
        memcpy(out + 4, &hi, sizeof(hi));
        return;
    }
    for (uint32_t k = 0; k < n; k++)
        out[k] = v + (int32_t)k;
}

static inline void sched_iota64(int64_t *out, size_t room, int64_t v, uint32_t n)
{
    if (KVRT_LIKELY(n == 1)) {
        out[0] = v;
        return;
    }
    if (KVRT_LIKELY(n <= 8 && room >= 8)) {
        sched_v2i64 a = {v, v + 1}, two = {2, 2};
        for (uint32_t k = 0; k < 8; k += 2, a += two)
            memcpy(out + k, &a, sizeof(a));
        return;
    }
    for (uint32_t k = 0; k < n; k++)
        out[k] = v + (int64_t)k;
}

/* out[k] = in[k] for k < n; room: entries writable from out, readable:
 * entries readable from in. Up to 8 entries move as two 16-byte vectors
 * whatever n is, so a count that varies at random (accepted drafts) costs
 * no mispredicted branch. */
static inline void sched_copy32(int32_t *out, size_t room, const int32_t *in, size_t readable,
                                uint32_t n)
{
    if (KVRT_LIKELY(n <= 8 && room >= 8 && readable >= 8)) {
        memcpy(out, in, 8 * sizeof(int32_t));
        return;
    }
    if (n <= 4 && room >= 4 && readable >= 4) {
        memcpy(out, in, 4 * sizeof(int32_t));
        return;
    }
    for (uint32_t k = 0; k < n; k++)
        out[k] = in[k];
}

static inline uint32_t sched_blocks_for(const kvrt_sched_t *s, uint64_t tokens)
{
    return (uint32_t)((tokens + s->tokens_per_block - 1) >> s->block_shift);
}

/* The request's state in group g. */
static inline seq_gref_t sched_gref(const kvrt_sched_t *s, seq_t *q, uint32_t g)
{
    if (g == 0)
        return (seq_gref_t){&q->table, &q->row_blocks, &q->released, &q->num_hashed,
                            &q->num_inserted, q->hashes};
    seq_group_t *x = &s->xgroups[(size_t)sched_slot(s, q) * (s->num_groups - 1) + g - 1];
    return (seq_gref_t){&x->table, &x->row_blocks, &x->released, &x->num_hashed,
                        &x->num_inserted, x->hashes};
}

/* Group g's slot mapping in the plan slot being built or committed. */
static inline int64_t *sched_group_slots(kvrt_sched_t *s, uint32_t g)
{
    return g ? s->groups[g].slot_mapping[__builtin_ctz(s->plan_bit)] : s->buf->slot_mapping;
}

static inline uint32_t sched_group_blocks_for(const sched_group_t *gr, uint64_t tokens)
{
    return (uint32_t)((tokens + gr->tokens_per_block - 1) >> gr->block_shift);
}

/* ---- request.c ------------------------------------------------------------ */

void sched_heap_push(kvrt_sched_t *s, seq_t *q);
void sched_heap_remove(kvrt_sched_t *s, seq_t *q);
static inline seq_t *sched_heap_top(const kvrt_sched_t *s)
{
    return s->heap_size ? &s->seqs[s->heap[0].index] : NULL;
}
/* Frees the request's table and row, takes it out of the running set. */
void sched_release(kvrt_sched_t *s, seq_t *q);
/* Ends a request: releases what it holds (unless it is in the plan, then
 * at commit), records reason/status and queues its end event. */
void sched_end(kvrt_sched_t *s, seq_t *q, kvrt_seq_end_reason_t reason,
               kvrt_status_t status);
void sched_free_requests(kvrt_sched_t *s);
/* Returns a slot to the free list. */
void sched_slot_free(kvrt_sched_t *s, seq_t *q);

/* ---- step.c / commit.c ---------------------------------------------------- */


/* Marks row r as changed since the last published plan. */
void sched_row_changed(kvrt_sched_t *s, uint32_t row);
/* Brings group g's row entries in line with its table after an append or
 * truncate. */
void sched_row_sync(kvrt_sched_t *s, seq_t *q, uint32_t g, bool last_replaced);
void sched_row_release(kvrt_sched_t *s, seq_t *q);
/* Gives q (holding no table) a table with its prefix-cache hits; unpins
 * nobody and counts nothing (admission counts the query and its hit). */
kvrt_status_t sched_match_prefix(kvrt_sched_t *s, seq_t *q, int32_t *hit_blocks);
/* Enough blocks for `need` more, above the watermark when it is in use. */
bool sched_blocks_available(const kvrt_sched_t *s, uint32_t need);

/* tokens rounded down to a multiple of unit, a power of two (block sizes
 * are, and so is hit_unit, the largest of them). */
static inline uint32_t sched_round_down(uint32_t tokens, uint32_t unit)
{
    return tokens & ~(unit - 1);
}

/* ---- shared_prefill.c: prompts sharing a prefix, computed once ------------ */

/* The table of noted keys, when share_blocks and a cache (else share_blocks
 * becomes 0). False: out of memory. */
bool sched_shared_alloc(kvrt_sched_t *s);
void sched_shared_free(kvrt_sched_t *s);
/* q, running and prefilling (planned in this step, in a plan in flight, or
 * left out of this step for want of budget or blocks): requests sharing
 * the block at its committed length may wait for it. Only while requests
 * are queued. */
void sched_shared_note_slow(kvrt_sched_t *s, seq_t *q);
static inline void sched_shared_note(kvrt_sched_t *s, seq_t *q)
{
    if (s->share_blocks && s->heap_size)
        sched_shared_note_slow(s, q);
}
/* q was just matched for admission (offered tokens, s->admit_match): when
 * another request computes its next blocks, q gives its hits back, leaves
 * the heap until sched_shared_requeue and true is returned. Only when keys
 * were noted in this step. */
bool sched_shared_wait_slow(kvrt_sched_t *s, seq_t *q, uint32_t offered);
static inline bool sched_shared_wait(kvrt_sched_t *s, seq_t *q, uint32_t offered)
{
    return s->share_blocks && s->shared_step == s->step_count &&
           sched_shared_wait_slow(s, q, offered);
}
/* q, about to be matched for admission, waited in an earlier step: while
 * the request it waits for has share_blocks or more of their shared blocks
 * left to commit, q leaves the heap again without being matched (true). */
bool sched_shared_still_waits_slow(kvrt_sched_t *s, seq_t *q);
static inline bool sched_shared_still_waits(kvrt_sched_t *s, seq_t *q)
{
    return q->share_id && sched_shared_still_waits_slow(s, q);
}
/* Puts the requests that waited back into the heap (after admission) and
 * sets share_waited_tokens to their tokens (0 when none waited). */
void sched_shared_requeue(kvrt_sched_t *s);
/* Releases the waiting request that holds its prefix hits, if any. */
void sched_unpin(kvrt_sched_t *s);
/* Entry i of the running array, unless its request left the running set
 * (sched_release marks the entry) or ended while a plan holds it. */
static inline bool sched_running_valid(const kvrt_sched_t *s, uint32_t i, seq_t **q_out)
{
    const uint32_t slot = s->running[i];
    if (KVRT_UNLIKELY(slot == SCHED_NONE))
        return false;
    *q_out = &s->seqs[slot];
    return (*q_out)->state == KVRT_SEQ_RUNNING;
}
/* Drops released entries of the running array, keeping admission order:
 * when they are an eighth of it or more, or, with force, when there is
 * any (step.c says why it waits). */
void sched_compact_running(kvrt_sched_t *s, bool force);

/* ---- preempt.c ------------------------------------------------------------ */

/* Takes q's entry out of the plan being built (q is preempted or failed):
 * later entries move up, its tokens go back to *budget. */
void sched_unplan(kvrt_sched_t *s, seq_t *q, uint32_t *budget);
/* Blocks ran out for q (running, or being admitted when `admitting`):
 * frees some the cheapest way left, preempting when nothing else can.
 * Returns true to try again, false when q is not to be planned this step
 * (preempted, failed, or waiting for blocks held elsewhere). */
bool sched_relieve(kvrt_sched_t *s, seq_t *q, uint32_t *budget, bool admitting);

/* ---- crossing.c ----------------------------------------------------------- */

/* Appends n tokens past q's tail block at position c (the pool's table
 * holds c - q->lag and is told the lag too, unless it holds them already):
 * their slots go to `slots`, new blocks to q's row, a copy-on-write to the
 * plan's copies. room: entries writable from slots; those past n are
 * scratch, or, with keep_rest, other entries' slots that must not change.
 * Errors: kvrt_table_append's (nothing changed). */
kvrt_status_t sched_append_tail(kvrt_sched_t *s, seq_t *q, uint32_t c, int64_t *slots,
                                size_t room, uint32_t n, bool keep_rest);
/* The slots of positions [c, c + n) from a row that holds their blocks;
 * room and keep_rest as for sched_append_tail. */
void sched_row_slots(const kvrt_sched_t *s, const int32_t *row, uint32_t c, int64_t *slots,
                     size_t room, uint32_t n, bool keep_rest);
/* Defers a running decode's append of n (1 + drafts) tokens (its plan
 * entry comes next, at the plan's current end) to the crossing batch. Returns false
 * when the batch is full or the blocks the append may need are not
 * certainly free: the caller takes the slow path, which runs the batch
 * first. Single-group schedulers only. */
bool sched_crossing_defer(kvrt_sched_t *s, seq_t *q, uint32_t c, uint32_t n);
/* Runs the deferred appends, in the order they were deferred. Must run
 * before anything else takes blocks or moves plan entries. */
void sched_crossings_flush(kvrt_sched_t *s, uint32_t *budget);

/* ---- full_blocks.c -------------------------------------------------------- */

/* Blocks of q that are full and hold computed tokens. */
static inline uint32_t sched_full_blocks(const kvrt_sched_t *s, const seq_t *q)
{
    uint32_t valid = q->computed < q->num_tokens ? q->computed : q->num_tokens;
    return valid >> s->block_shift;
}
/* Hashes q's blocks [num_hashed, full), each chained to the previous (full
 * blocks of tokens q has: (full) * tokens_per_block <= num_tokens). Hashes
 * of blocks not yet computed are kept too: a block's hash is its tokens'. */
void sched_hash_blocks(kvrt_sched_t *s, seq_t *q, uint32_t full);
/* Offers the request's newly full blocks to the prefix cache now (hashing
 * each block once in its life: hashes survive preemption). */
void sched_cache_full_blocks(kvrt_sched_t *s, seq_t *q);
/* The same, deferred to the commit's insert batch (at once on hybrid
 * schedulers, or when the batch is full). A request without a new full
 * block takes a place in the batch and is skipped there. */
void sched_insert_defer(kvrt_sched_t *s, seq_t *q);
/* Runs the deferred inserts, in the order they were deferred. Must run
 * before anything in the commit releases blocks or ends a request. */
void sched_inserts_flush(kvrt_sched_t *s);
/* When a cache was reset since the last call, marks every request holding
 * K/V SCHED_CACHE_STALE. Called where a scheduler call may go on to insert
 * or adopt blocks (step, commit, arrival completion): one load per cache
 * group when nothing was reset, O(max_requests) after a reset. */
void sched_sync_cache_resets(kvrt_sched_t *s);
/* The caches' resets so far, summed over the groups. */
uint64_t sched_cache_resets(const kvrt_sched_t *s);

/* ---- arrival.c ------------------------------------------------------------ */

void sched_arrivals_init(kvrt_sched_t *s);
/* Gives up arrivals whose deadline is before now: their requests are queued
 * again for recomputation. O(1) unless a deadline has passed. */
void sched_expire_arrivals(kvrt_sched_t *s, uint64_t now_ns);
/* The request lets go of its arrival: the arrival keeps the request's table
 * (blocks the caller may still write) until it completes. */
void sched_abandon_arrival(kvrt_sched_t *s, seq_t *q);
void sched_free_arrivals(kvrt_sched_t *s);
/* Under block pressure: the queued request holding arrived K/V that would
 * be admitted last, other than `keep` (NULL: any), lets its blocks go (into
 * the prefix cache, when there is one, where it may find them again).
 * False when there is none. */
bool sched_release_landed(kvrt_sched_t *s, const seq_t *keep);
/* q no longer holds K/V that arrived while queued (admitted, or its blocks
 * released). */
void sched_unland(kvrt_sched_t *s, seq_t *q);
/* Could the blocks that queued requests other than q hold with arrived K/V,
 * given up, make q's next n tokens fit in every group (above the watermark
 * when in use)? An estimate: a block shared with the cache counts. */
bool sched_landed_could_fit(const kvrt_sched_t *s, seq_t *q, uint32_t n);

/* ---- groups.c ------------------------------------------------------------- */

/* Reads and checks the groups, sets s->groups, s->num_groups, s->hybrid,
 * s->hit_unit and group 0's mirror fields. */
kvrt_status_t sched_groups_read(kvrt_sched_t *s, uint32_t num_groups,
                                const kvrt_sched_group_params_t *const *groups);
/* Allocates the per-group arrays (after the scheduler's sizes are known). */
bool sched_groups_alloc(kvrt_sched_t *s);
void sched_groups_free(kvrt_sched_t *s);
/* Points each plan slot's group descriptors at their arrays. */
void sched_groups_init_plans(kvrt_sched_t *s);
/* Refreshes the plan's group descriptors at the end of a step. */
void sched_groups_publish(kvrt_sched_t *s);
/* Most blocks group g can hold for a request of `capacity` tokens whose
 * longest multimodal item has longest_item tokens (0: none). */
uint32_t sched_group_worst_blocks(const kvrt_sched_t *s, uint32_t g, uint32_t capacity,
                                  uint32_t longest_item);
/* Sums per_group[g] into per_pool[owner of g], for g < num_groups:
 * per_pool[g] is then what the groups sharing group g's pool need of it
 * (0 for a group that is not an owner). */
static inline void sched_pool_sums(const kvrt_sched_t *s, const uint64_t *per_group,
                                   uint64_t *per_pool)
{
    for (uint32_t g = 0; g < s->num_groups; g++)
        per_pool[g] = 0;
    for (uint32_t g = 0; g < s->num_groups; g++)
        per_pool[s->groups[g].owner] += per_group[g];
}
/* Bytes of a request's hashes in groups >= 1, and setting them up. */
size_t sched_groups_hash_bytes(const kvrt_sched_t *s, uint32_t capacity);
void sched_groups_init_seq(kvrt_sched_t *s, seq_t *q, char *memory, uint32_t capacity);
/* Destroys q's tables of every group (tail first) and clears its rows. */
void sched_groups_release(kvrt_sched_t *s, seq_t *q);
/* Releases q's blocks out of each window, then: the blocks every group
 * needs for n more tokens of q fit (above the watermark when
 * `watermark`). */
bool sched_groups_fit(kvrt_sched_t *s, seq_t *q, uint32_t n, bool watermark);
/* The append of n tokens of q when they stay inside every group's tail
 * block (most decodes): blocks out of each window released, slots at the
 * plan's end from the tails, the tables told later (q->lag). Takes no
 * block, so it needs no sched_groups_fit; false, with only the windows'
 * blocks released, when some group needs a block. */
bool sched_groups_take_in_tails(kvrt_sched_t *s, seq_t *q, uint32_t n);
/* Appends n tokens of q to every group (after sched_groups_fit): slots at
 * the plan's end, rows synced; the tables are told q->lag first. Releases
 * blocks out of each window first. On error returns it, every table
 * holding what it held (a tail block one copied stays copied: the copy
 * is in the plan and the row) and q->lag still owed. */
kvrt_status_t sched_groups_append(kvrt_sched_t *s, seq_t *q, uint32_t n);
/* Rollback in every group to q->computed. */
void sched_groups_truncate(kvrt_sched_t *s, seq_t *q);
/* Prefix match over every group (the hybrid rule in kvrt/sched.h); q
 * holds no table. On error q holds no table and nothing changed. */
kvrt_status_t sched_groups_match(kvrt_sched_t *s, seq_t *q, uint32_t *hit_tokens_out);
/* Offers newly full blocks of every group to its cache. */
void sched_groups_cache_full(kvrt_sched_t *s, seq_t *q);
/* Blocks q's table of group g holds (its entries less the released ones
 * before a window). */
uint32_t sched_group_held_blocks(const kvrt_sched_t *s, seq_t *q, uint32_t g);
/* Extends q's table in every group to `end` tokens (> q->computed, which
 * is a multiple of every block size) for K/V that arrives: group g gets blocks
 * first[g] .. first[g] + count[g] - 1 (a sliding-window group only the
 * window the token at `end` reads; entries before are holes). Returns
 * KVRT_ERR_NO_BLOCKS, with nothing changed, when a group lacks the blocks
 * (above the watermark when in use); any other error may leave q's tables
 * changed, and the caller releases them. */
kvrt_status_t sched_groups_extend_for_arrival(kvrt_sched_t *s, seq_t *q, uint32_t end,
                                              uint32_t *first, uint32_t *count);
/* The longest prefix, at most `end` tokens, whose K/V every group of q
 * holds once group g has landed landed[g] of its blocks first[g] ..
 * first[g] + count[g] - 1; q->computed when the arrival adds nothing. */
uint32_t sched_groups_arrival_served(const kvrt_sched_t *s, seq_t *q, uint32_t end,
                                     const uint32_t *first, const uint32_t *count,
                                     const uint32_t *landed);
/* Drops plan entry data of groups >= 1 for an entry leaving the plan. */
void sched_groups_unplan(kvrt_sched_t *s, uint32_t slot, uint32_t t0, uint32_t n,
                         uint32_t tail);
/* Resets the per-step counts of groups >= 1. */
void sched_groups_begin_step(kvrt_sched_t *s);
/* CSR tables of groups >= 1. */
void sched_groups_csr(kvrt_sched_t *s);

/* ---- ngram.c -------------------------------------------------------------- */

/* Bytes the index of a request of `capacity` tokens needs (0: proposer off). */
size_t ngram_bytes(const kvrt_sched_t *s, uint32_t capacity);
void ngram_init(ngram_index_t *ix, void *memory, uint32_t capacity);
/* Proposes up to `limit` tokens continuing tokens[0, n) into out; returns
 * how many (0 when no n-gram of length >= ngram_min matches). */
uint32_t ngram_propose(const kvrt_sched_t *s, ngram_index_t *ix, const int32_t *tokens,
                       uint32_t n, uint32_t limit, int32_t *out);

#endif /* KVRT_SCHED_INTERNAL_H */
