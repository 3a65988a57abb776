/*
 * sched_ideal.c - the sched suite's ideal loop: the memory a decode step
 * and its commit cannot avoid, touched by two tight loops with no
 * scheduler around them, timed at the same N in the same run.
 *
 * Why: the suite's flat-cost target compares a step at 32K running
 * sequences with one at 1K, and how much of the growth the machine's
 * caches alone cause differs from machine to machine (and, on a shared
 * virtual machine, from process to process). This loop does per sequence
 * what any paged scheduler must: in the step it reads the sequence's
 * state (one 64-byte record: last token, length, tail block) and writes
 * the plan's entry and arrays (the sizes kvrt's plan has); in the commit
 * it reads the sampled token and the entry back, writes the record and
 * appends the token to the sequence's own token array (a line of its
 * own); at every 16th token it takes a block id from a free stack and
 * writes it into the sequence's block row (another line of its own).
 * Records are dense and visited in order, as the suite's requests are
 * running in the order they were added: the loop is a lower bound, not a
 * model of kvrt's layout. Its figure, and its own ratio between sizes,
 * is in the note of each of the suite's figures.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bench.h"
#include "sched_ideal.h"
#include "kvrt/kvrt.h"

#define IDEAL_TPB 16u          /* tokens per block, as the suite's */
#define IDEAL_TOKENS 1024u     /* token array entries per sequence: a page */
#define IDEAL_ROW 128u         /* block row entries per sequence */
#define IDEAL_AHEAD 8u         /* records fetched ahead, as kvrt's loops */

typedef struct ideal_record {
    int32_t last_token;
    uint32_t num_tokens;
    uint32_t computed;
    int32_t tail_block;
    uint64_t user_tag;
    uint32_t generation;
    uint32_t row;
    uint8_t rest[32];          /* the other fields a decode reads */
} ideal_record_t;
_Static_assert(sizeof(ideal_record_t) == 64, "one line per sequence");

typedef struct ideal {
    uint32_t n;
    ideal_record_t *records;
    int32_t *tokens;           /* [n][IDEAL_TOKENS] */
    int32_t *rows;             /* [n][IDEAL_ROW] */
    int32_t *free_stack;
    uint32_t num_free;
    kvrt_plan_seq_t *entries;
    int32_t *query_start_loc, *seq_lens, *row_index, *input_tokens, *positions, *sampled;
    int64_t *slot_mapping;
} ideal_t;

/* Zeroed memory on transparent huge pages, as the scheduler's own
 * arrays and request memory are (the TLB would otherwise dominate). */
static void *huge_zeroed(size_t bytes)
{
    const size_t huge = 2u << 20;
    bytes = (bytes + huge - 1) & ~(huge - 1);
    void *p = NULL;
    if (posix_memalign(&p, huge, bytes) != 0)
        return NULL;
    madvise(p, bytes, MADV_HUGEPAGE);
    memset(p, 0, bytes);
    return p;
}

static void ideal_free(ideal_t *d)
{
    free(d->records);
    free(d->tokens);
    free(d->rows);
    free(d->free_stack);
    free(d->entries);
    free(d->query_start_loc);
    free(d->seq_lens);
    free(d->row_index);
    free(d->input_tokens);
    free(d->positions);
    free(d->sampled);
    free(d->slot_mapping);
}

static int ideal_open(ideal_t *d, uint32_t n, uint32_t steps)
{
    memset(d, 0, sizeof(*d));
    d->n = n;
    /* Blocks for every crossing the timed steps make, and then some. */
    d->num_free = n * (steps / IDEAL_TPB + 2);
    d->records = huge_zeroed((size_t)n * sizeof(ideal_record_t));
    d->tokens = huge_zeroed((size_t)n * IDEAL_TOKENS * sizeof(int32_t));
    d->rows = huge_zeroed((size_t)n * IDEAL_ROW * sizeof(int32_t));
    d->free_stack = huge_zeroed((size_t)d->num_free * sizeof(int32_t));
    d->entries = huge_zeroed((size_t)n * sizeof(kvrt_plan_seq_t));
    d->query_start_loc = huge_zeroed(((size_t)n + 1) * sizeof(int32_t));
    d->seq_lens = huge_zeroed((size_t)n * sizeof(int32_t));
    d->row_index = huge_zeroed((size_t)n * sizeof(int32_t));
    d->input_tokens = huge_zeroed((size_t)n * sizeof(int32_t));
    d->positions = huge_zeroed((size_t)n * sizeof(int32_t));
    d->sampled = huge_zeroed((size_t)n * sizeof(int32_t));
    d->slot_mapping = huge_zeroed((size_t)n * sizeof(int64_t));
    if (!d->records || !d->tokens || !d->rows || !d->free_stack || !d->entries ||
        !d->query_start_loc || !d->seq_lens || !d->row_index || !d->input_tokens ||
        !d->positions || !d->sampled || !d->slot_mapping)
        return -1;
    for (uint32_t b = 0; b < d->num_free; b++)
        d->free_stack[b] = (int32_t)(d->num_free - b);
    /* Lengths spread over a block's positions so that crossings spread
     * over the steps (appends wrap inside the token array: ideal_commit). */
    for (uint32_t i = 0; i < n; i++) {
        ideal_record_t *r = &d->records[i];
        r->num_tokens = 1 + (i * 7) % (IDEAL_TOKENS / 2);
        r->computed = r->num_tokens - 1;
        r->generation = 1;
        r->row = i;
        r->tail_block = d->free_stack[--d->num_free];
        d->rows[(size_t)i * IDEAL_ROW + r->computed / IDEAL_TPB] = r->tail_block;
    }
    return 0;
}

/* One step: read each record, write the plan. */
static void ideal_step(ideal_t *d)
{
    for (uint32_t i = 0; i < d->n; i++) {
        if (i + IDEAL_AHEAD < d->n)
            __builtin_prefetch(&d->records[i + IDEAL_AHEAD]);
        const ideal_record_t *r = &d->records[i];
        const uint32_t pos = r->num_tokens - 1;
        d->entries[i] = (kvrt_plan_seq_t){.id = ((uint64_t)r->generation << 32) | i,
                                          .user_tag = r->user_tag,
                                          .kind = KVRT_PLAN_DECODE,
                                          .num_new_tokens = 1,
                                          .num_computed_tokens = r->computed,
                                          .sample = 1,
                                          .row = r->row};
        d->query_start_loc[i + 1] = (int32_t)i + 1;
        d->seq_lens[i] = (int32_t)pos + 1;
        d->row_index[i] = (int32_t)r->row;
        d->input_tokens[i] = r->last_token;
        d->positions[i] = (int32_t)pos;
        d->slot_mapping[i] = (int64_t)r->tail_block * IDEAL_TPB + pos % IDEAL_TPB;
    }
}

/* Its commit: the sampled token appended, a block taken at a boundary. */
static void ideal_commit(ideal_t *d)
{
    for (uint32_t i = 0; i < d->n; i++) {
        /* The record ahead, and nearer, the token line its length points
         * at: a dependent fetch, as every scheduler's append has. */
        if (i + IDEAL_AHEAD < d->n)
            __builtin_prefetch(&d->records[i + IDEAL_AHEAD], 1);
        if (i + IDEAL_AHEAD / 2 < d->n) {
            const uint32_t j = i + IDEAL_AHEAD / 2;
            __builtin_prefetch(d->tokens + (size_t)j * IDEAL_TOKENS +
                                   d->records[j].num_tokens % IDEAL_TOKENS,
                               1);
        }
        ideal_record_t *r = &d->records[i];
        const kvrt_plan_seq_t *e = &d->entries[i];
        const int32_t token = d->sampled[i];
        r->computed += e->num_new_tokens;
        /* Wraps inside the array: a page of tokens per sequence is enough
         * to touch a line of its own per token, as an append does. */
        d->tokens[(size_t)i * IDEAL_TOKENS + r->num_tokens % IDEAL_TOKENS] = token;
        r->num_tokens++;
        r->last_token = token;
        if (r->computed % IDEAL_TPB == 0 && d->num_free) {
            r->tail_block = d->free_stack[--d->num_free];
            d->rows[(size_t)r->row * IDEAL_ROW + (r->computed / IDEAL_TPB) % IDEAL_ROW] =
                r->tail_block;
        }
    }
}

int sched_ideal_ns(uint32_t n, uint32_t iters, int repeats, double *ns_out)
{
    if (n == 0 || iters == 0 || repeats < 1 || repeats > 1000)
        return -1;
    ideal_t d;
    /* Warm-up steps, then every repeat's, must find blocks. */
    if (ideal_open(&d, n, iters * (uint32_t)(repeats + 1))) {
        ideal_free(&d);
        return -1;
    }
    double samples[1000];
    for (int r = -1; r < repeats; r++) { /* r = -1: warm-up, not timed */
        uint64_t start = bench_thread_cpu_ns();
        for (uint32_t k = 0; k < iters; k++) {
            ideal_step(&d);
            for (uint32_t i = 0; i < n; i++) /* the engine samples */
                d.sampled[i] = 7 + (d.input_tokens[i] + (int32_t)k) % 100;
            ideal_commit(&d);
        }
        if (r >= 0)
            samples[r] = (double)(bench_thread_cpu_ns() - start) / iters / n;
    }
    bench_consume(d.tokens);
    ideal_free(&d);
    *ns_out = bench_median(samples, repeats);
    return 0;
}
