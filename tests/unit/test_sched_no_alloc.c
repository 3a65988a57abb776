/*
 * test_sched_no_alloc.c - once warm, kvrt_sched_step, kvrt_sched_commit and
 * kvrt_sched_set_drafts allocate nothing: a steady mix of admissions (some
 * waiting for prompt blocks others compute), chunked prefills, decodes,
 * speculation with rollback (drafts set by kvrt_sched_set_drafts, or
 * carried by every other commit), prefix-cache inserts and ends runs for
 * 2,000 steps under a counting malloc. Nor does
 * the kernel allocate for them: steps that cache never-used blocks of a
 * large pool take no page fault.
 *
 * The counter is an interposer: this executable defines malloc and friends,
 * forwarding to glibc's, so every allocation in the process (kvrt's
 * included) goes through it. It cannot run beside a sanitizer's own
 * interposer, so the test is labelled nosanitize.
 */
#include <stddef.h>
#include <string.h>
#include <sys/resource.h>

#include "sched_fixture.h"

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);
extern void __libc_free(void *p);

static int counting;
static unsigned long allocations;
static void *last_caller; /* where the last counted allocation came from */
#define COUNT()                                                                  \
    (allocations += counting,                                                    \
     counting ? (void)(last_caller = __builtin_return_address(0)) : (void)0)

void *malloc(size_t size)
{
    COUNT();
    return __libc_malloc(size);
}
void *calloc(size_t n, size_t size)
{
    COUNT();
    return __libc_calloc(n, size);
}
void *realloc(void *p, size_t size)
{
    COUNT();
    return __libc_realloc(p, size);
}
void *aligned_alloc(size_t alignment, size_t size)
{
    COUNT();
    return __libc_memalign(alignment, size);
}
int posix_memalign(void **out, size_t alignment, size_t size)
{
    COUNT();
    void *p = __libc_memalign(alignment, size);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}
void free(void *p) { __libc_free(p); }

#define VOCAB 50
#define LIVE 48u

static int32_t next_token(int32_t prev) { return (prev * 7 + 3) % VOCAB; }

Test(sched_no_alloc, warm_steps_and_commits_allocate_nothing)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                            KVRT_SCHED_PARAM_CHUNK | KVRT_SCHED_PARAM_DRAFT |
                                            KVRT_SCHED_PARAM_MAX_SEQ_TOKENS |
                                            KVRT_SCHED_PARAM_SHARED_PREFILL,
                              .max_batch_tokens = 256, .prefill_chunk_tokens = 32,
                              .max_draft_tokens = 3, .max_seq_tokens = 256,
                              /* families share 16 tokens: requests wait for them */
                              .shared_prefill_min_tokens = 8};
    sched_fixture_t f = sched_fixture_open(2048, 4, true, &sp);
    kvrt_ctx_t *ctx = f.ctx;
    kvrt_sched_t *sched = f.sched;

    uint64_t rng = 42;
    static kvrt_seq_id_t ids[512];
    static uint32_t counts[512];
    static int32_t drafts[512 * 3], tokens[1024];
    static uint32_t accepted[512], next_counts[512];
    kvrt_seq_info_t ev[64];
    unsigned long counted_steps = 0;
    uint64_t waits_warm = 0;
    for (int step = 0; step < 3000; step++) {
        /* Outside the counted calls: keep LIVE requests alive, sharing
         * prefixes, and drain ends (kvrt_seq_add allocates per request). */
        kvrt_sched_stats_t st;
        ASSERT_OK(ctx, kvrt_sched_stats(sched, &st));
        for (uint64_t live = st.running + st.waiting; live < LIVE; live++) {
            int32_t prompt[80];
            uint32_t len = 20 + test_rand_below(&rng, 60);
            /* Four families of prompts at a time, new ones every 100 steps. */
            int32_t family = (int32_t)((uint32_t)step / 100 * 4 + test_rand_below(&rng, 4)) * 16;
            for (uint32_t i = 0; i < len; i++)
                prompt[i] = i < 16 ? family + (int32_t)i : (int32_t)test_rand_below(&rng, VOCAB);
            kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = len,
                                   .max_new_tokens = 10 + test_rand_below(&rng, 60)};
            kvrt_seq_id_t id;
            ASSERT_OK(ctx, kvrt_seq_add(sched, &p, &id));
        }
        uint32_t n = 0;
        ASSERT_OK(ctx, kvrt_sched_drain_ended(sched, ev, 64, &n));

        counting = step >= 1000; /* warm-up: tables and buffers at working size */
        if (step == 1000)
            waits_warm = st.shared_prefill_waits;
        unsigned long before = allocations;
        /* The engine: verifies drafts, samples, and drafts the next step. */
        uint32_t num_drafts = 0, at = 0;
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(ctx, kvrt_sched_step(sched, (uint64_t)step, &plan));
        uint32_t total = 0;
        for (uint32_t i = 0; i < plan->num_seqs; i++) {
            const kvrt_plan_seq_t *e = &plan->seqs[i];
            accepted[i] = 0;
            next_counts[i] = 0;
            if (!e->sample)
                continue;
            const int32_t *in = plan->input_tokens + plan->query_start_loc[i];
            int32_t prev = in[e->num_new_tokens - 1 - e->num_drafts];
            uint32_t a = 0;
            while (a < e->num_drafts && in[e->num_new_tokens - e->num_drafts + a] ==
                                            next_token(prev)) {
                prev = next_token(prev);
                tokens[total++] = prev;
                a++;
            }
            tokens[total++] = next_token(prev);
            accepted[i] = a;
            ids[num_drafts] = e->id;
            counts[num_drafts] = 1 + test_rand_below(&rng, 3);
            int32_t d = next_token(tokens[total - 1]);
            for (uint32_t j = 0; j < counts[num_drafts]; j++) {
                /* Right most of the time: acceptance and rollback. */
                drafts[at + j] = test_rand_below(&rng, 4) ? d : (int32_t)VOCAB - 1;
                d = next_token(d);
            }
            next_counts[i] = counts[num_drafts];
            at += counts[num_drafts++];
        }
        const bool drafts_in_commit = step & 1;
        if (plan->num_seqs) {
            kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED |
                                             (drafts_in_commit ? KVRT_COMMIT_DRAFTS : 0),
                               .step = plan->step, .num_seqs = plan->num_seqs,
                               .num_tokens = total, .tokens = tokens, .num_accepted = accepted,
                               .num_next_drafts = next_counts, .next_drafts = drafts};
            ASSERT_OK(ctx, kvrt_sched_commit(sched, &c));
        }
        /* Requests that just ended cannot take drafts: keep the running. */
        uint32_t kept = 0, from = 0, to = 0;
        for (uint32_t i = 0; i < num_drafts && !drafts_in_commit; i++) {
            kvrt_seq_info_t info;
            counting = 0;
            ASSERT_OK(ctx, kvrt_seq_info(sched, ids[i], &info));
            counting = step >= 1000;
            bool decoding = info.state == KVRT_SEQ_RUNNING &&
                            info.computed_tokens + 1 == info.prompt_tokens + info.output_tokens;
            if (decoding) {
                memmove(drafts + to, drafts + from, counts[i] * sizeof(int32_t));
                ids[kept] = ids[i];
                counts[kept++] = counts[i];
                to += counts[i];
            }
            from += counts[i];
        }
        if (!drafts_in_commit)
            ASSERT_OK(ctx, kvrt_sched_set_drafts(sched, kept, ids, counts, drafts));
        /* The offset locates the caller: nm's kvrt_sched_step + offset. */
        cr_assert_eq(allocations, before,
                     "step %d allocated %lu times (caller at kvrt_sched_step%+td)", step,
                     allocations - before, (char *)last_caller - (char *)&kvrt_sched_step);
        counted_steps += counting;
        counting = 0;
    }
    kvrt_sched_stats_t st;
    ASSERT_OK(ctx, kvrt_sched_stats(sched, &st));
    cr_assert_eq(counted_steps, 2000);
    cr_assert_gt(st.spec_accepted, 0);
    cr_assert_gt(st.spec_proposed, st.spec_accepted, "rollbacks happened");
    cr_assert_gt(st.prefix_hit_tokens, 0);
    cr_assert_gt(st.shared_prefill_waits, waits_warm + 20,
                 "requests waited for shared blocks in the counted steps: %llu",
                 (unsigned long long)(st.shared_prefill_waits - waits_warm));
    cr_assert_gt(st.finished_length, 100);
    kvrt_sched_destroy(sched); /* its requests' blocks go back */
    f.sched = NULL;
    sched_fixture_close(&f);
}

/* Minor page faults this thread has taken so far. */
static long thread_minor_faults(void)
{
    struct rusage ru;
    cr_assert_eq(getrusage(RUSAGE_THREAD, &ru), 0);
    return ru.ru_minflt;
}

Test(sched_no_alloc, warm_steps_caching_fresh_blocks_take_no_page_fault)
{
    /* Large enough that the pool's and the cache's per-block arrays are
     * mapped memory (2 MiB and up), not heap memory zeroed up front. Every
     * prompt is new and long, so each step caches about 200 blocks the
     * pool never handed out before, reaching new pages of the block names
     * and metadata, until the pool has cycled once. */
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                            KVRT_SCHED_PARAM_MAX_SEQ_TOKENS,
                              .max_batch_tokens = 1024, .max_seq_tokens = 512};
    sched_fixture_t f = sched_fixture_open(131072, 4, true, &sp);
    static int32_t tokens[1024];
    for (uint32_t i = 0; i < 1024; i++)
        tokens[i] = 1 + (int32_t)(i % VOCAB);
    uint64_t rng = 7;
    long faults = 0;
    kvrt_cache_stats_t warm;
    for (int step = 0; step < 500; step++) {
        kvrt_sched_stats_t st;
        ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
        for (uint64_t live = st.running + st.waiting; live < LIVE; live++) {
            int32_t prompt[256];
            uint32_t len = 150 + test_rand_below(&rng, 100);
            for (uint32_t i = 0; i < len; i++)
                prompt[i] = (int32_t)test_rand_below(&rng, 1u << 30);
            kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = len,
                                   .max_new_tokens = 1 + test_rand_below(&rng, 8)};
            kvrt_seq_id_t id;
            ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id));
        }
        kvrt_seq_info_t ev[64];
        sched_fixture_drain(&f, ev, 64);
        if (step == 100) /* warm-up: buffers at working size */
            ASSERT_OK(f.ctx, kvrt_cache_stats(f.cache, &warm));
        /* Only the scheduler's calls are counted: no assertion between. */
        const kvrt_batch_plan_t *plan;
        long before = thread_minor_faults();
        kvrt_status_t stepped = kvrt_sched_step(f.sched, (uint64_t)step, &plan);
        kvrt_status_t committed = KVRT_OK;
        if (stepped == KVRT_OK && plan->num_seqs) {
            uint32_t samples = 0;
            for (uint32_t i = 0; i < plan->num_seqs; i++)
                samples += plan->seqs[i].sample;
            kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs,
                               .num_tokens = samples, .tokens = tokens};
            committed = kvrt_sched_commit(f.sched, &c);
        }
        if (step >= 100)
            faults += thread_minor_faults() - before;
        ASSERT_OK(f.ctx, stepped);
        ASSERT_OK(f.ctx, committed);
    }
    kvrt_cache_stats_t end;
    ASSERT_OK(f.ctx, kvrt_cache_stats(f.cache, &end));
    /* Past two 2 MiB pages of block names (56 bytes each) while counted. */
    uint64_t counted = end.inserts - warm.inserts;
    cr_assert_gt(counted, (4u << 20) / 56,
                 "%llu blocks cached while counted", (unsigned long long)counted);
    cr_assert_eq(faults, 0, "400 warm steps took %ld page faults", faults);
    kvrt_sched_destroy(f.sched); /* its requests' blocks go back */
    f.sched = NULL;
    sched_fixture_close(&f);
}
