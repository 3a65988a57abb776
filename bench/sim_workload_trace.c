/*
 * sim_workload_trace.c - kvrt-sim requests replayed from a trace
 * (bench/trace.h): arrivals at the trace's timestamps (times time_scale),
 * prompts whose tokens are derived from the trace's hash ids, answers of
 * exactly output_length tokens that end by length.
 *
 * Mooncake hash ids name 512-token blocks by their content and everything
 * before them, so equal ids at equal positions are equal prefixes. Deriving
 * each block's tokens from its id alone (sim_trace_block_tokens) turns that
 * into real token sequences: kvrt's chained hashes then share exactly the
 * prefixes the trace says are shared. A last, partial block takes the first
 * tokens of its id's block. Azure traces have no prefix information; the
 * parser gives every block an id of its own, so nothing is shared.
 *
 * The replay is open-loop: arrivals do not wait for earlier requests, as in
 * the trace. A request with output_length 0 is sent with 1 (an engine always
 * samples at least the token that ends the prefill).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "sim_rng.h"
#include "sim_workload_internal.h"

typedef struct trace_workload {
    sim_workload_t base;
    const trace_t *trace;
    sim_trace_params_t p;
    size_t count;           /* requests replayed */
    size_t next;            /* index of the next request */
    double last_us;         /* arrivals never go back in time */
    int32_t *prompt;        /* scratch for the current request's prompt */
    uint32_t prompt_capacity;
} trace_workload_t;

void sim_trace_block_tokens(int64_t hash_id, uint32_t first, uint32_t count,
                            int32_t *out)
{
    /* One SplitMix64 output per (id, position): positions below 512 fit in
     * 9 bits, so distinct (id, position) pairs give distinct inputs. */
    uint64_t base = (uint64_t)hash_id << 9;
    for (uint32_t j = 0; j < count; j++) {
        uint64_t x = sim_splitmix64((base | (first + j)) ^ 0x6B7672742D73696Dull);
        out[j] = (int32_t)(((x >> 32) * SIM_TEXT_TOKENS) >> 32);
    }
}

static double arrival_of(const trace_workload_t *t, size_t i)
{
    double us = t->trace->requests[i].timestamp_ms * 1e3 * t->p.time_scale;
    return us > t->last_us ? us : t->last_us;
}

static double trace_next_arrival(const sim_workload_t *w)
{
    const trace_workload_t *t = (const trace_workload_t *)w;
    return t->next < t->count ? arrival_of(t, t->next) : INFINITY;
}

static int trace_pop(sim_workload_t *w, sim_request_t *out, char *error, size_t error_size)
{
    trace_workload_t *t = (trace_workload_t *)w;
    if (t->next >= t->count)
        return 0;
    size_t i = t->next;
    const trace_request_t *r = &t->trace->requests[i];
    uint32_t prompt_len = r->input_length;
    uint32_t answer_len = r->output_length ? r->output_length : 1;
    if (prompt_len > t->prompt_capacity) {
        int32_t *prompt = realloc(t->prompt, (size_t)prompt_len * sizeof(*prompt));
        if (!prompt)
            goto no_memory;
        t->prompt = prompt;
        t->prompt_capacity = prompt_len;
    }
    const int64_t *ids = trace_request_hash_ids(t->trace, i);
    for (uint32_t b = 0; b < r->num_hash_ids; b++) {
        uint32_t first = b * TRACE_BLOCK_TOKENS;
        uint32_t n = prompt_len - first < TRACE_BLOCK_TOKENS ? prompt_len - first
                                                              : TRACE_BLOCK_TOKENS;
        sim_trace_block_tokens(ids[b], 0, n, t->prompt + first);
    }
    int32_t *answer = malloc((size_t)answer_len * sizeof(*answer));
    if (!answer)
        goto no_memory;
    sim_answer_generate(t->p.seed, i, t->prompt, prompt_len, answer_len, t->p.copy_prob,
                        0, answer);
    double arrival = arrival_of(t, i);
    t->last_us = arrival;
    *out = (sim_request_t){
        .arrival_us = arrival,
        .abort_us = INFINITY,
        .deadline_us = t->p.deadline_ms > 0 ? arrival + t->p.deadline_ms * 1e3 : INFINITY,
        .priority = 0,
        .prompt = t->prompt,
        .prompt_len = prompt_len,
        .max_new_tokens = answer_len,
        .answer = answer,
        .answer_len = answer_len,
        .cookie = i,
    };
    t->next++;
    return 1;
no_memory:
    snprintf(error, error_size, "trace workload: out of memory at request %zu", i + 1);
    return -1;
}

static int trace_done(sim_workload_t *w, const sim_request_t *request, double now_us,
                      uint32_t generated, int completed)
{
    return 0;
}

static uint64_t trace_planned(const sim_workload_t *w)
{
    return ((const trace_workload_t *)w)->count;
}

static int trace_exhausted(const sim_workload_t *w)
{
    const trace_workload_t *t = (const trace_workload_t *)w;
    return t->next >= t->count;
}

static void trace_destroy(sim_workload_t *w)
{
    trace_workload_t *t = (trace_workload_t *)w;
    free(t->prompt);
    free(t);
}

static const sim_workload_ops_t trace_ops = {
    .destroy = trace_destroy,
    .next_arrival = trace_next_arrival,
    .pop = trace_pop,
    .done = trace_done,
    .planned = trace_planned,
    .exhausted = trace_exhausted,
};

int sim_workload_trace(const trace_t *trace, const sim_trace_params_t *params,
                       sim_workload_t **out, char *error, size_t error_size)
{
    if (!(params->time_scale > 0.0 && params->time_scale <= 1e6)) {
        snprintf(error, error_size, "trace workload: time scale must be in (0, 1e6]");
        return -1;
    }
    if (!(params->copy_prob >= 0.0 && params->copy_prob <= 1.0) ||
        !(params->deadline_ms >= 0.0)) {
        snprintf(error, error_size,
                 "trace workload: copy probability must be in [0, 1], deadline >= 0");
        return -1;
    }
    if (trace->num_requests == 0) {
        snprintf(error, error_size, "trace workload: the trace has no requests");
        return -1;
    }
    for (size_t i = 0; i < trace->num_requests; i++) {
        const trace_request_t *r = &trace->requests[i];
        if (r->input_length == 0) {
            snprintf(error, error_size, "trace workload: request %zu has an empty prompt",
                     i + 1);
            return -1;
        }
        uint64_t blocks = ((uint64_t)r->input_length + TRACE_BLOCK_TOKENS - 1) /
                          TRACE_BLOCK_TOKENS;
        if (r->num_hash_ids != blocks ||
            r->first_hash_id + r->num_hash_ids > trace->num_hash_ids) {
            snprintf(error, error_size,
                     "trace workload: request %zu has %u hash ids for %u tokens", i + 1,
                     r->num_hash_ids, r->input_length);
            return -1;
        }
    }
    trace_workload_t *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(error, error_size, "trace workload: out of memory");
        return -1;
    }
    t->base.ops = &trace_ops;
    t->trace = trace;
    t->p = *params;
    t->count = trace->num_requests;
    if (params->max_requests && params->max_requests < t->count)
        t->count = params->max_requests;
    *out = &t->base;
    return 0;
}
