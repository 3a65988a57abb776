/*
 * sim_workload.c - the workload calls of kvrt-sim (dispatching to the
 * synthetic or trace kind) and the reference-answer model both share.
 */
#include <stdlib.h>

#include "sim_rng.h"
#include "sim_workload_internal.h"

void sim_workload_destroy(sim_workload_t *workload)
{
    if (workload)
        workload->ops->destroy(workload);
}

double sim_workload_next_arrival(const sim_workload_t *workload)
{
    return workload->ops->next_arrival(workload);
}

int sim_workload_pop(sim_workload_t *workload, sim_request_t *out, char *error,
                     size_t error_size)
{
    int got = workload->ops->pop(workload, out, error, error_size);
    if (got == 1)
        out->id = workload->popped++;
    return got;
}

int sim_workload_done(sim_workload_t *workload, const sim_request_t *request,
                      double now_us, uint32_t generated, int completed)
{
    return workload->ops->done(workload, request, now_us, generated, completed);
}

uint64_t sim_workload_popped(const sim_workload_t *workload) { return workload->popped; }

uint64_t sim_workload_planned(const sim_workload_t *workload)
{
    return workload->ops->planned(workload);
}

int sim_workload_exhausted(const sim_workload_t *workload)
{
    return workload->ops->exhausted(workload);
}

static int32_t text_token(sim_rng_t *rng)
{
    return (int32_t)sim_rng_below(rng, SIM_TEXT_TOKENS);
}

/*
 * Answers are written run by run. A run is either fresh text (1..16 random
 * tokens: n-grams of random tokens over a 128k vocabulary essentially never
 * repeat, so a prompt-lookup proposer finds nothing there) or, with
 * probability copy_prob, a span of 4..32 consecutive prompt tokens (as
 * answers quote code, names and earlier turns), where it finds the
 * continuation once the span's first n-gram has been emitted.
 */
void sim_answer_generate(uint64_t seed, uint64_t stream, const int32_t *prompt,
                         uint32_t prompt_len, uint32_t len, double copy_prob,
                         int end_with_stop, int32_t *out)
{
    sim_rng_t rng = sim_rng_stream(seed, stream);
    uint32_t i = 0;
    while (i < len) {
        if (prompt_len >= 4 && sim_rng_unit(&rng) < copy_prob) {
            uint32_t span = 4 + sim_rng_below(&rng, 29);
            if (span > prompt_len)
                span = prompt_len;
            uint32_t start = sim_rng_below(&rng, prompt_len - span + 1);
            for (uint32_t j = 0; j < span && i < len; j++, i++) {
                int32_t t = prompt[start + j];
                out[i] = t == SIM_STOP_TOKEN ? text_token(&rng) : t;
            }
        } else {
            uint32_t run = 1 + sim_rng_below(&rng, 16);
            for (uint32_t j = 0; j < run && i < len; j++, i++)
                out[i] = text_token(&rng);
        }
    }
    if (end_with_stop && len > 0)
        out[len - 1] = SIM_STOP_TOKEN;
}
