/*
 * sim_engine.c - kvrt-sim's discrete-event serving loop (see sim_engine.h).
 *
 * Per request the simulator keeps a record indexed by the request id (the
 * kvrt user tag): its reference answer, how many of its tokens were
 * committed, and when its first and latest tokens came out. Everything kvrt
 * reports back is checked against these records: a request's end event must
 * carry exactly the tokens committed for it, every request must end once,
 * and at the end no block may be left in use.
 */
#include "sim_engine.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sim_kv.h"
#include "sim_rng.h"

#define EVENT_BATCH 256u
#define PROGRESS_EVERY 512u

enum { REC_NEW = 0, REC_LIVE = 1, REC_ENDED = 2 };

typedef struct record {
    sim_request_t req;          /* req.prompt is not valid after kvrt_seq_add */
    kvrt_seq_id_t seq;
    uint32_t emitted;           /* answer tokens committed */
    uint32_t running_slot;      /* 1 + index in engine.running, 0: not running */
    uint64_t offered;           /* tokens offered to the cache at its admissions */
    int state;
    double first_token_us, last_token_us;
} record_t;

typedef struct pending_abort {
    double at_us;
    uint64_t rec;
} pending_abort_t;

typedef struct engine {
    const sim_config_t *cfg;
    sim_workload_t *workload;
    kvrt_ctx_t *ctx;
    sim_kv_t kv;                /* the pools and caches, one per cache group */
    kvrt_cache_t *cache;        /* group 0's; NULL without the prefix cache */
    kvrt_sched_t *sched;
    sim_tier_t *tier;           /* NULL: no tiers below the GPU */
    record_t *recs;
    uint64_t num_recs;
    uint64_t *running;          /* records seen in a plan and not since
                                   preempted or ended (draft proposals) */
    uint32_t num_running;
    pending_abort_t *aborts;    /* min-heap by at_us */
    size_t num_aborts, abort_capacity;
    int32_t *tokens;            /* commit scratch */
    uint32_t *accepted;
    int32_t *draft;
    kvrt_seq_info_t events[EVENT_BATCH];
    sim_rng_t draft_rng;
    sim_samples_t ttft, tpot, e2e;
    double now_us;
    uint64_t live;              /* added to kvrt, not yet drained */
    uint64_t waiting;           /* queued in kvrt (waiting or preempted) */
    uint64_t batch_seqs;        /* summed over steps */
    sim_results_t *res;
    char *error;
    size_t error_size;
} engine_t;

static int fail(engine_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(engine_t *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->error, e->error_size, fmt, ap);
    va_end(ap);
    return -1;
}

static int fail_kvrt(engine_t *e, const char *call, kvrt_status_t st)
{
    return fail(e, "%s: %s (%s)", call, kvrt_status_str(st), kvrt_ctx_last_error(e->ctx));
}

static double wall_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t to_ns(double us) { return (uint64_t)(us * 1000.0 + 0.5); }

/* ---- configuration --------------------------------------------------------- */

sim_config_t sim_config_default(void)
{
    return (sim_config_t){
        .cost = sim_cost_model_default(),
        .num_layers = 32,
        .num_kv_heads = 8,
        .head_dim = 128,
        .block_tokens = 16,
        .kv_gb = 60.0,
        .prefix_cache = 1,
        .cache_policy = KVRT_CACHE_LRU,
        .max_batch_tokens = 8192,
        .max_seqs = 256,
        .chunk_tokens = 0,
        .watermark = 1,
        .max_waiting = 1024,
        .shared_prefill_min_tokens = 256,
        .spec = SIM_SPEC_NGRAM,
        .spec_k = 4,
        .ngram_min = 2,
        .ngram_max = 4,
        .adaptive_draft = 1,
        .draft_accept = 0.7,
        .seed = 1,
        .tier = sim_tier_config_default(),
    };
}

static uint64_t block_bytes_of(const sim_config_t *c)
{
    return sim_kv_block_bytes(c, c->num_layers, c->block_tokens);
}

uint32_t sim_config_kv_blocks(const sim_config_t *c)
{
    uint64_t bytes = block_bytes_of(c);
    double blocks = bytes ? floor(c->kv_gb * 1e9 / (double)bytes) : 0.0;
    return blocks > 2147483647.0 ? 2147483647u : (uint32_t)blocks;
}

int sim_config_validate(const sim_config_t *c, char *error, size_t error_size)
{
    const char *what = NULL;
    if (sim_cost_model_validate(&c->cost, &what) != 0) {
        snprintf(error, error_size, "cost model: %s must be a finite number >= 0", what);
        return -1;
    }
    kvrt_kv_layout_t layout = {.num_layers = c->num_layers, .num_kv_heads = c->num_kv_heads,
                               .head_dim = c->head_dim, .tokens_per_block = c->block_tokens};
    if (kvrt_layout_validate(&layout) != KVRT_OK) {
        snprintf(error, error_size,
                 "KV layout: layers and KV heads 1..1024, head dim 1..1024, block "
                 "tokens a power of two in 1..4096");
        return -1;
    }
    if (!(c->kv_gb > 0.0) || sim_config_kv_blocks(c) < 16) {
        snprintf(error, error_size, "KV memory of %g GB holds fewer than 16 blocks", c->kv_gb);
        return -1;
    }
    if (c->max_waiting == 0 || c->max_waiting > (1u << 22)) {
        snprintf(error, error_size, "max waiting must be 1..%u", 1u << 22);
        return -1;
    }
    if (c->spec != SIM_SPEC_OFF && (c->spec_k == 0 || c->spec_k > KVRT_SCHED_MAX_DRAFT)) {
        snprintf(error, error_size, "speculation needs 1..%u draft tokens", KVRT_SCHED_MAX_DRAFT);
        return -1;
    }
    if (c->spec == SIM_SPEC_DRAFT && !(c->draft_accept >= 0.0 && c->draft_accept <= 1.0)) {
        snprintf(error, error_size, "draft acceptance must be in [0, 1]");
        return -1;
    }
    if (sim_tier_config_validate(&c->tier, error, error_size) != 0)
        return -1;
    if (c->tier.host_gb > 0.0 && !c->prefix_cache) {
        snprintf(error, error_size, "tiers below the GPU need the prefix cache");
        return -1;
    }
    if (c->sliding_window > KVRT_TABLE_MAX_TOKENS ||
        (c->sliding_window && (c->window_layers == 0 || c->window_layers > c->num_layers))) {
        snprintf(error, error_size, "a sliding window needs 1..%u tokens on 1..%u layers",
                 KVRT_TABLE_MAX_TOKENS, c->num_layers);
        return -1;
    }
    if (c->window_block_tokens && (c->window_block_tokens > 4096 ||
                                   (c->window_block_tokens & (c->window_block_tokens - 1)))) {
        snprintf(error, error_size, "window block tokens must be a power of two in 1..4096");
        return -1;
    }
    if (c->sliding_window && c->tier.host_gb > 0.0) {
        snprintf(error, error_size, "tiers below the GPU are not simulated for hybrid models");
        return -1;
    }
    sim_kv_t kv;
    if (sim_kv_plan(c, &kv, error, error_size) != 0)
        return -1;
    /* Scheduler limits (batch tokens, sequences, n-gram range) are checked
     * by kvrt_sched_create, whose message is passed on. */
    return 0;
}

/* ---- kvrt objects ------------------------------------------------------------ */

static int open_kvrt(engine_t *e)
{
    const sim_config_t *c = e->cfg;
    kvrt_status_t st = kvrt_ctx_create(NULL, &e->ctx);
    if (st != KVRT_OK)
        return fail(e, "kvrt_ctx_create: %s", kvrt_status_str(st));
    char error[256];
    if (sim_kv_plan(c, &e->kv, error, sizeof error) != 0)
        return fail(e, "%s", error);
    uint64_t max_requests = (uint64_t)c->max_waiting + c->max_seqs + 16;
    kvrt_sched_params_t sp = {
        .field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS | KVRT_SCHED_PARAM_MAX_SEQS |
                      KVRT_SCHED_PARAM_WATERMARK | KVRT_SCHED_PARAM_MAX_REQUESTS |
                      KVRT_SCHED_PARAM_MAX_SEQ_TOKENS | KVRT_SCHED_PARAM_SHARED_PREFILL,
        .max_batch_tokens = c->max_batch_tokens,
        .max_seqs = c->max_seqs,
        .use_watermark = c->watermark,
        .max_requests = max_requests > (1u << 24) ? (1u << 24) : (uint32_t)max_requests,
        .max_seq_tokens = 1u << 20,
        .shared_prefill_min_tokens = c->shared_prefill_min_tokens,
    };
    if (c->chunk_tokens) {
        sp.field_mask |= KVRT_SCHED_PARAM_CHUNK;
        sp.prefill_chunk_tokens = c->chunk_tokens;
    }
    if (c->spec != SIM_SPEC_OFF) {
        sp.field_mask |= KVRT_SCHED_PARAM_DRAFT | KVRT_SCHED_PARAM_ADAPTIVE_DRAFT;
        sp.max_draft_tokens = c->spec_k;
        sp.adaptive_draft = c->adaptive_draft;
    }
    if (c->spec == SIM_SPEC_NGRAM) {
        sp.field_mask |= KVRT_SCHED_PARAM_NGRAM;
        sp.ngram_min = c->ngram_min;
        sp.ngram_max = c->ngram_max;
    }
    const char *call = NULL;
    if ((st = sim_kv_open(&e->kv, e->ctx, c, &sp, &e->sched, &call)) != KVRT_OK)
        return fail_kvrt(e, call, st);
    e->cache = e->kv.groups[0].cache;
    return sim_tier_open(&c->tier, e->cache, e->sched, block_bytes_of(c),
                         c->cost.prefill_us_per_token, &e->tier, e->error, e->error_size);
}

/* ---- bookkeeping ------------------------------------------------------------- */

/* A record that appears in a plan while not running was just admitted
 * (first time or after preemption): kvrt matched all but the last of its
 * tokens against the cache. Counting offers here rather than reading
 * kvrt_sched_stats keeps the hit rate per admission. */
static int running_add(engine_t *e, uint64_t rec)
{
    record_t *r = &e->recs[rec];
    if (r->running_slot)
        return 0;
    if (e->num_running > e->cfg->max_seqs)
        return fail(e, "more than %u sequences running", e->cfg->max_seqs);
    e->running[e->num_running] = rec;
    r->running_slot = ++e->num_running;
    if (e->cache)
        r->offered += (uint64_t)r->req.prompt_len + r->emitted - 1;
    return 0;
}

static void running_remove(engine_t *e, uint64_t rec)
{
    record_t *r = &e->recs[rec];
    if (!r->running_slot)
        return;
    uint64_t last = e->running[--e->num_running];
    e->running[r->running_slot - 1] = last;
    e->recs[last].running_slot = r->running_slot;
    r->running_slot = 0;
}

static int abort_push(engine_t *e, double at_us, uint64_t rec)
{
    if (e->num_aborts == e->abort_capacity) {
        size_t capacity = e->abort_capacity ? e->abort_capacity * 2 : 256;
        pending_abort_t *a = realloc(e->aborts, capacity * sizeof(*a));
        if (!a)
            return fail(e, "out of memory");
        e->aborts = a;
        e->abort_capacity = capacity;
    }
    size_t i = e->num_aborts++;
    while (i > 0 && at_us < e->aborts[(i - 1) / 2].at_us) {
        e->aborts[i] = e->aborts[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->aborts[i] = (pending_abort_t){at_us, rec};
    return 0;
}

static pending_abort_t abort_pop(engine_t *e)
{
    pending_abort_t top = e->aborts[0], last = e->aborts[--e->num_aborts];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= e->num_aborts)
            break;
        if (child + 1 < e->num_aborts && e->aborts[child + 1].at_us < e->aborts[child].at_us)
            child++;
        if (!(e->aborts[child].at_us < last.at_us))
            break;
        e->aborts[i] = e->aborts[child];
        i = child;
    }
    if (e->num_aborts > 0)
        e->aborts[i] = last;
    return top;
}

/* A request leaves the simulation: its conversation learns how it ended. */
static int finish_record(engine_t *e, record_t *r, int completed)
{
    r->state = REC_ENDED;
    e->res->output_tokens += r->emitted;
    int rc = sim_workload_done(e->workload, &r->req, e->now_us, r->emitted, completed);
    free(r->req.answer);
    r->req.answer = NULL;
    return rc != 0 ? fail(e, "workload: out of memory") : 0;
}

/* ---- arrivals, aborts, ends ---------------------------------------------------- */

static int add_request(engine_t *e, sim_request_t *req)
{
    if (req->id >= e->num_recs)
        return fail(e, "workload produced request %llu of %llu planned",
                    (unsigned long long)req->id, (unsigned long long)e->num_recs);
    record_t *r = &e->recs[req->id];
    *r = (record_t){.req = *req, .state = REC_LIVE};
    e->res->submitted++;
    e->res->prompt_tokens += req->prompt_len;
    if (req->abort_us <= e->now_us) {
        /* The client gave up while the request still queued in front of
         * the engine. */
        e->res->aborted++;
        return finish_record(e, r, 0);
    }
    static const int32_t stop[] = {SIM_STOP_TOKEN};
    kvrt_seq_params_t sp = {
        .field_mask = KVRT_SEQ_PARAM_STOP | KVRT_SEQ_PARAM_PRIORITY | KVRT_SEQ_PARAM_USER_TAG,
        .prompt = req->prompt,
        .prompt_len = req->prompt_len,
        .max_new_tokens = req->max_new_tokens,
        .stop_tokens = stop,
        .num_stop_tokens = 1,
        .priority = (int32_t)req->priority,
        .user_tag = req->id,
    };
    if (isfinite(req->deadline_us)) {
        sp.field_mask |= KVRT_SEQ_PARAM_DEADLINE;
        sp.deadline_ns = to_ns(req->deadline_us);
    }
    kvrt_status_t st = kvrt_seq_add(e->sched, &sp, &r->seq);
    if (st == KVRT_ERR_NO_BLOCKS || st == KVRT_ERR_INVALID_ARG) {
        /* Too long for this pool or scheduler: an engine rejects it. */
        e->res->rejected++;
        return finish_record(e, r, 0);
    }
    if (st != KVRT_OK)
        return fail_kvrt(e, "kvrt_seq_add", st);
    e->live++;
    e->waiting++;
    if (e->tier && sim_tier_admit(e->tier, r->seq, req->prompt, req->prompt_len, e->now_us,
                                  e->error, e->error_size) != 0)
        return -1;
    if (isfinite(req->abort_us))
        return abort_push(e, req->abort_us, req->id);
    return 0;
}

static int admit_arrivals(engine_t *e)
{
    kvrt_sched_stats_t stats;
    kvrt_sched_stats(e->sched, &stats);
    e->waiting = stats.waiting;
    while (e->waiting < e->cfg->max_waiting &&
           sim_workload_next_arrival(e->workload) <= e->now_us) {
        sim_request_t req;
        int got = sim_workload_pop(e->workload, &req, e->error, e->error_size);
        if (got < 0)
            return -1;
        if (got == 0)
            break;
        if (add_request(e, &req) != 0)
            return -1;
    }
    return 0;
}

static int apply_aborts(engine_t *e)
{
    while (e->num_aborts > 0 && e->aborts[0].at_us <= e->now_us) {
        pending_abort_t a = abort_pop(e);
        record_t *r = &e->recs[a.rec];
        if (r->state != REC_LIVE)
            continue; /* ended before the client gave up */
        kvrt_status_t st = kvrt_seq_abort(e->sched, r->seq);
        if (st != KVRT_OK)
            return fail_kvrt(e, "kvrt_seq_abort", st);
    }
    return 0;
}

static int record_latency(engine_t *e, const record_t *r)
{
    double arrival = r->req.arrival_us;
    int rc = sim_samples_add(&e->ttft, (r->first_token_us - arrival) / 1e3);
    rc |= sim_samples_add(&e->e2e, (r->last_token_us - arrival) / 1e3);
    if (r->emitted >= 2)
        rc |= sim_samples_add(&e->tpot, (r->last_token_us - r->first_token_us) / 1e3 /
                                            (double)(r->emitted - 1));
    return rc ? fail(e, "out of memory") : 0;
}

static int end_event(engine_t *e, const kvrt_seq_info_t *ev)
{
    if (ev->user_tag >= e->num_recs)
        return fail(e, "end event with unknown user tag %llu",
                    (unsigned long long)ev->user_tag);
    record_t *r = &e->recs[ev->user_tag];
    if (r->state != REC_LIVE || r->seq != ev->id)
        return fail(e, "request %llu ended twice or under another id",
                    (unsigned long long)ev->user_tag);
    if (ev->output_tokens != r->emitted ||
        (r->emitted && memcmp(ev->output, r->req.answer, r->emitted * sizeof(int32_t)) != 0))
        return fail(e, "request %llu ended with %u output tokens, %u were committed",
                    (unsigned long long)ev->user_tag, ev->output_tokens, r->emitted);
    running_remove(e, ev->user_tag);
    e->live--;
    e->res->prefix_hit_tokens += ev->cached_tokens;
    e->res->prefix_query_tokens += r->offered;
    int completed = 0;
    switch (ev->end_reason) {
    case KVRT_END_STOP:
    case KVRT_END_LENGTH:
        if (r->emitted == 0)
            return fail(e, "request %llu finished without output",
                        (unsigned long long)ev->user_tag);
        if (ev->end_reason == KVRT_END_STOP) {
            e->res->finished_stop++;
            if (r->req.answer[r->emitted - 1] != SIM_STOP_TOKEN)
                return fail(e, "request %llu ended by stop token without one",
                            (unsigned long long)ev->user_tag);
        } else {
            e->res->finished_length++;
        }
        completed = 1;
        if (record_latency(e, r) != 0)
            return -1;
        break;
    case KVRT_END_ABORTED:
        e->res->aborted++;
        break;
    case KVRT_END_FAILED:
        e->res->failed++;
        break;
    default:
        return fail(e, "request %llu ended with reason %d", (unsigned long long)ev->user_tag,
                    (int)ev->end_reason);
    }
    return finish_record(e, r, completed);
}

static int drain(engine_t *e)
{
    for (;;) {
        uint32_t n = 0;
        kvrt_status_t st = kvrt_sched_drain_ended(e->sched, e->events, EVENT_BATCH, &n);
        if (st != KVRT_OK)
            return fail_kvrt(e, "kvrt_sched_drain_ended", st);
        for (uint32_t i = 0; i < n; i++)
            if (end_event(e, &e->events[i]) != 0)
                return -1;
        if (n < EVENT_BATCH)
            return 0;
    }
}

/* ---- one step ------------------------------------------------------------------- */

/* SIM_SPEC_DRAFT: a draft model proposes k tokens for every decoding
 * sequence; each matches the reference with probability draft_accept. */
static int propose_drafts(engine_t *e)
{
    uint32_t k = e->cfg->spec_k;
    for (uint32_t i = 0; i < e->num_running; i++) {
        record_t *r = &e->recs[e->running[i]];
        if (r->emitted == 0 || r->emitted + 1 >= r->req.answer_len)
            continue;
        uint32_t n = r->req.answer_len - r->emitted - 1;
        if (n > k)
            n = k;
        for (uint32_t j = 0; j < n; j++) {
            int32_t want = r->req.answer[r->emitted + j];
            e->draft[j] = sim_rng_unit(&e->draft_rng) < e->cfg->draft_accept
                              ? want
                              : (int32_t)((uint32_t)(want + 1) % SIM_VOCAB_SIZE);
        }
        kvrt_status_t st = kvrt_seq_set_draft(e->sched, r->seq, e->draft, n);
        /* A sequence still recomputing after preemption takes no draft. */
        if (st != KVRT_OK && st != KVRT_ERR_BAD_STATE)
            return fail_kvrt(e, "kvrt_seq_set_draft", st);
    }
    return 0;
}

static int forget_preempted(engine_t *e, const kvrt_batch_plan_t *plan)
{
    for (uint32_t i = 0; i < plan->num_preempted; i++) {
        kvrt_seq_info_t info;
        kvrt_status_t st = kvrt_seq_info(e->sched, plan->preempted[i], &info);
        if (st != KVRT_OK)
            return fail_kvrt(e, "kvrt_seq_info", st);
        running_remove(e, info.user_tag);
    }
    return 0;
}

/*
 * Fills the commit for a plan: each sampling sequence emits its next
 * reference token(s); a speculative entry's drafts are accepted while they
 * equal the reference (greedy verification), stopping one short of the
 * answer's end so the last token always comes as the bonus.
 */
static int build_commit(engine_t *e, const kvrt_batch_plan_t *plan, sim_step_shape_t *shape,
                        uint32_t *num_tokens_out)
{
    uint32_t n = 0, max_drafts = 0;
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        const kvrt_plan_seq_t *s = &plan->seqs[i];
        if (s->user_tag >= e->num_recs || e->recs[s->user_tag].state != REC_LIVE)
            return fail(e, "plan names unknown request %llu", (unsigned long long)s->user_tag);
        record_t *r = &e->recs[s->user_tag];
        if (running_add(e, s->user_tag) != 0)
            return -1;
        if (s->kind == KVRT_PLAN_PREFILL)
            sim_step_add_prefill(shape, s->num_new_tokens, s->num_computed_tokens);
        else
            sim_step_add_decode(shape, s->num_new_tokens, s->num_computed_tokens);
        if (s->num_drafts > max_drafts)
            max_drafts = s->num_drafts;
        e->accepted[i] = 0;
        if (!s->sample)
            continue;
        if (r->emitted >= r->req.answer_len)
            return fail(e, "request %llu asked for token %u of a %u-token answer",
                        (unsigned long long)s->user_tag, r->emitted + 1, r->req.answer_len);
        uint32_t a = 0;
        if (s->kind == KVRT_PLAN_SPEC) {
            const int32_t *drafts = plan->input_tokens + plan->query_start_loc[i] + 1;
            uint32_t limit = r->req.answer_len - r->emitted - 1;
            if (limit > s->num_drafts)
                limit = s->num_drafts;
            while (a < limit && drafts[a] == r->req.answer[r->emitted + a])
                a++;
        }
        memcpy(e->tokens + n, r->req.answer + r->emitted, (a + 1) * sizeof(int32_t));
        n += a + 1;
        e->accepted[i] = a;
    }
    if (e->cfg->spec == SIM_SPEC_DRAFT)
        shape->draft_positions = max_drafts;
    *num_tokens_out = n;
    return 0;
}

static int run_step(engine_t *e, const kvrt_batch_plan_t *plan)
{
    if (plan->num_tokens == 0)
        return fail(e, "step %llu planned %u sequences and no tokens",
                    (unsigned long long)plan->step, plan->num_seqs);
    if (forget_preempted(e, plan) != 0)
        return -1;
    const sim_config_t *c = e->cfg;
    sim_step_shape_t shape = {
        .window = c->sliding_window,
        .window_share = c->sliding_window ? (double)c->window_layers / c->num_layers : 0.0};
    uint32_t num_tokens = 0;
    if (build_commit(e, plan, &shape, &num_tokens) != 0)
        return -1;
    double dt = sim_step_time_us(&e->cfg->cost, &shape);
    e->now_us += dt;
    e->res->busy_s += dt / 1e6;
    e->res->steps++;
    e->batch_seqs += plan->num_seqs;
    kvrt_commit_t commit = {
        .field_mask = e->cfg->spec != SIM_SPEC_OFF ? KVRT_COMMIT_ACCEPTED : 0,
        .step = plan->step,
        .num_seqs = plan->num_seqs,
        .num_tokens = num_tokens,
        .tokens = e->tokens,
        .num_accepted = e->accepted,
    };
    kvrt_status_t st = kvrt_sched_commit(e->sched, &commit);
    if (st != KVRT_OK)
        return fail_kvrt(e, "kvrt_sched_commit", st);
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        const kvrt_plan_seq_t *s = &plan->seqs[i];
        if (!s->sample)
            continue;
        record_t *r = &e->recs[s->user_tag];
        if (r->emitted == 0)
            r->first_token_us = e->now_us;
        r->emitted += e->accepted[i] + 1;
        r->last_token_us = e->now_us;
    }
    sim_kv_sample(&e->kv);
    return drain(e);
}

/* When nothing can run: the time of the next arrival or abort. */
static double next_event_us(const engine_t *e)
{
    double next = INFINITY;
    if (e->waiting < e->cfg->max_waiting)
        next = sim_workload_next_arrival(e->workload);
    if (e->num_aborts > 0 && e->aborts[0].at_us < next)
        next = e->aborts[0].at_us;
    return fmin(next, sim_tier_next_us(e->tier));
}

static int loop(engine_t *e, sim_progress_fn progress, void *user)
{
    for (;;) {
        if ((e->tier && sim_tier_land(e->tier, e->now_us, e->error, e->error_size) != 0) ||
            admit_arrivals(e) != 0 || apply_aborts(e) != 0 || drain(e) != 0)
            return -1;
        if (e->live == 0 && sim_workload_exhausted(e->workload))
            return 0;
        if (e->cfg->spec == SIM_SPEC_DRAFT && propose_drafts(e) != 0)
            return -1;
        const kvrt_batch_plan_t *plan = NULL;
        kvrt_status_t st = kvrt_sched_step(e->sched, to_ns(e->now_us), &plan);
        if (st != KVRT_OK)
            return fail_kvrt(e, "kvrt_sched_step", st);
        if (plan->num_seqs > 0) {
            if (run_step(e, plan) != 0)
                return -1;
        } else {
            if (drain(e) != 0) /* requests the step failed */
                return -1;
            double next = next_event_us(e);
            if (next == INFINITY && e->live > 0)
                return fail(e, "%llu requests can never run (the scheduler plans nothing "
                               "and nothing else will happen)",
                            (unsigned long long)e->live);
            if (next == INFINITY && !sim_workload_exhausted(e->workload) && e->live == 0)
                return fail(e, "the workload stalled with %llu of %llu requests sent",
                            (unsigned long long)sim_workload_popped(e->workload),
                            (unsigned long long)sim_workload_planned(e->workload));
            if (next > e->now_us && next < INFINITY)
                e->now_us = next;
        }
        if (progress && e->res->steps % PROGRESS_EVERY == 0 && plan->num_seqs > 0) {
            sim_progress_t p = {.ended = e->res->submitted - e->live,
                                .planned = sim_workload_planned(e->workload),
                                .sim_s = e->now_us / 1e6,
                                .steps = e->res->steps,
                                .ctx = e->ctx};
            progress(user, &p);
        }
    }
}

/* ---- results --------------------------------------------------------------------- */

static int collect(engine_t *e)
{
    sim_results_t *res = e->res;
    /* Onloads of requests aborted while their KV arrived still hold blocks. */
    if (e->tier && sim_tier_land(e->tier, INFINITY, e->error, e->error_size) != 0)
        return -1;
    sim_tier_results(e->tier, &res->tier);
    kvrt_sched_stats_t s;
    kvrt_sched_stats(e->sched, &s);
    if (s.output_tokens != res->output_tokens)
        return fail(e, "kvrt committed %llu output tokens, the simulator %llu",
                    (unsigned long long)s.output_tokens,
                    (unsigned long long)res->output_tokens);
    uint64_t ended = res->finished_stop + res->finished_length + res->aborted + res->failed +
                     res->rejected;
    if (ended != res->submitted || res->submitted != sim_workload_popped(e->workload))
        return fail(e, "%llu requests submitted, %llu ended",
                    (unsigned long long)res->submitted, (unsigned long long)ended);
    if (sim_kv_check_empty(&e->kv, e->ctx, e->error, e->error_size) != 0)
        return -1;
    res->sim_s = e->now_us / 1e6;
    res->prefill_tokens = s.prefill_tokens;
    res->preemptions = s.preemptions;
    res->deadline_misses = s.deadline_misses;
    res->spec_proposed = s.spec_proposed;
    res->spec_accepted = s.spec_accepted;
    res->spec_verifications = s.spec_verifications;
    const sim_kv_group_t *g = &e->kv.groups[0];
    res->kv_blocks = g->num_blocks;
    res->block_tokens = g->block_tokens;
    res->peak_used_blocks = g->peak_used_blocks;
    if (e->kv.shared) {
        res->shared_kv_groups = e->kv.num_groups;
        res->shared_group_layers = e->kv.group_layers;
    } else if (e->kv.num_groups > 1) {
        res->window_blocks = e->kv.groups[1].num_blocks;
        res->window_block_tokens = e->kv.groups[1].block_tokens;
        res->window_peak_used_blocks = e->kv.groups[1].peak_used_blocks;
    }
    res->cache_evictions = sim_kv_evictions(&e->kv);
    if (res->steps) {
        res->mean_batch_seqs = (double)e->batch_seqs / (double)res->steps;
        res->mean_step_ms = res->busy_s * 1e3 / (double)res->steps;
        res->sched_cpu_us_per_step =
            (double)(s.step_cpu_ns + s.commit_cpu_ns) / 1e3 / (double)res->steps;
    }
    sim_latency_summarize(&e->ttft, &res->ttft_ms);
    sim_latency_summarize(&e->tpot, &res->tpot_ms);
    sim_latency_summarize(&e->e2e, &res->e2e_ms);
    return 0;
}

static void close_engine(engine_t *e)
{
    sim_tier_close(e->tier);
    kvrt_sched_destroy(e->sched);
    sim_kv_close(&e->kv);
    kvrt_ctx_destroy(e->ctx);
    for (uint64_t i = 0; e->recs && i < e->num_recs; i++)
        free(e->recs[i].req.answer);
    free(e->recs);
    free(e->running);
    free(e->aborts);
    free(e->tokens);
    free(e->accepted);
    free(e->draft);
    sim_samples_free(&e->ttft);
    sim_samples_free(&e->tpot);
    sim_samples_free(&e->e2e);
}

int sim_run(const sim_config_t *config, sim_workload_t *workload, sim_progress_fn progress,
            void *progress_user, sim_results_t *results, char *error, size_t error_size)
{
    if (sim_config_validate(config, error, error_size) != 0)
        return -1;
    double wall_start = wall_now_s();
    sim_results_t res = {0};
    engine_t e = {.cfg = config, .workload = workload, .res = &res, .error = error,
                  .error_size = error_size,
                  .draft_rng = sim_rng_stream(config->seed, 0x64726166ull)};
    e.num_recs = sim_workload_planned(workload);
    uint64_t max_tokens = (uint64_t)config->max_batch_tokens + config->max_seqs + 1;
    e.recs = calloc(e.num_recs, sizeof(*e.recs));
    e.running = calloc((size_t)config->max_seqs + 1, sizeof(*e.running));
    e.tokens = malloc(max_tokens * sizeof(*e.tokens));
    e.accepted = malloc(((size_t)config->max_seqs + 1) * sizeof(*e.accepted));
    e.draft = malloc((KVRT_SCHED_MAX_DRAFT + 1) * sizeof(*e.draft));
    int rc;
    if (!e.recs || !e.running || !e.tokens || !e.accepted || !e.draft)
        rc = fail(&e, "out of memory for %llu requests", (unsigned long long)e.num_recs);
    else
        rc = open_kvrt(&e);
    if (rc == 0)
        rc = loop(&e, progress, progress_user);
    if (rc == 0)
        rc = collect(&e);
    if (rc == 0 && progress) {
        sim_progress_t p = {.ended = res.submitted, .planned = res.submitted,
                            .sim_s = res.sim_s, .steps = res.steps, .ctx = e.ctx};
        progress(progress_user, &p);
    }
    close_engine(&e);
    res.wall_s = wall_now_s() - wall_start;
    if (rc == 0)
        *results = res;
    return rc;
}
