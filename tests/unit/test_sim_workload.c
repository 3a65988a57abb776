/*
 * test_sim_workload.c - kvrt-sim's workloads: the synthetic generator is
 * seeded, closed-loop and exact in its request count, its turns extend the
 * previous prompt with the generated answer and its conversations share
 * system prompts; trace replay derives equal tokens from equal hash ids and
 * keeps the trace's times and lengths; reference answers quote the prompt.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim_workload.h"

static char error[256];

/* Pops every request in arrival order, ending each at once (as an
 * infinitely fast engine would); returns the count. */
static uint64_t drain_all(sim_workload_t *w, uint64_t *checksum)
{
    uint64_t n = 0, sum = 0;
    double last = 0.0;
    while (!sim_workload_exhausted(w) && n < 1000000) {
        double at = sim_workload_next_arrival(w);
        cr_assert(at < INFINITY, "workload stalled after %llu requests",
                  (unsigned long long)n);
        cr_assert_geq(at, last);
        last = at;
        sim_request_t r;
        cr_assert_eq(sim_workload_pop(w, &r, error, sizeof error), 1, "%s", error);
        cr_assert_eq(r.id, n);
        cr_assert_geq(r.prompt_len, 1u);
        cr_assert_leq(r.answer_len, r.max_new_tokens);
        for (uint32_t i = 0; i < r.prompt_len; i++)
            sum = sum * 31 + (uint64_t)r.prompt[i];
        for (uint32_t i = 0; i < r.answer_len; i++)
            sum = sum * 37 + (uint64_t)r.answer[i];
        cr_assert_eq(sim_workload_done(w, &r, at + 1000.0, r.answer_len, 1), 0);
        free(r.answer);
        n++;
    }
    cr_assert_eq(sim_workload_pop(w, &(sim_request_t){0}, error, sizeof error), 0);
    *checksum = sum;
    return n;
}

Test(sim_workload, synthetic_is_seeded_and_exact)
{
    sim_synthetic_params_t p = sim_synthetic_defaults();
    p.num_requests = 300;
    p.abort_prob = 0.0;
    uint64_t sums[3];
    for (int run = 0; run < 3; run++) {
        p.seed = run < 2 ? 7 : 8;
        sim_workload_t *w = NULL;
        cr_assert_eq(sim_workload_synthetic(&p, &w, error, sizeof error), 0, "%s", error);
        cr_assert_eq(drain_all(w, &sums[run]), 300u);
        cr_assert_eq(sim_workload_popped(w), 300u);
        sim_workload_destroy(w);
    }
    cr_assert_eq(sums[0], sums[1], "same seed, different requests");
    cr_assert_neq(sums[0], sums[2], "different seeds, same requests");
}

Test(sim_workload, turns_extend_prompt_and_answer)
{
    sim_synthetic_params_t p = sim_synthetic_defaults();
    p.num_requests = 2;
    p.turns = 100.0; /* one conversation takes the whole budget */
    p.abort_prob = 0.0;
    p.think_s = 3.0;
    sim_workload_t *w = NULL;
    cr_assert_eq(sim_workload_synthetic(&p, &w, error, sizeof error), 0, "%s", error);
    sim_request_t first, second;
    cr_assert_eq(sim_workload_pop(w, &first, error, sizeof error), 1);
    /* Closed loop: the next turn is not due before this one ends. */
    cr_assert_eq(sim_workload_next_arrival(w), INFINITY);
    uint32_t first_len = first.prompt_len;
    int32_t *copy = malloc((first_len + first.answer_len) * sizeof(int32_t));
    memcpy(copy, first.prompt, first_len * sizeof(int32_t));
    uint32_t generated = first.answer_len > 5 ? first.answer_len - 3 : first.answer_len;
    memcpy(copy + first_len, first.answer, generated * sizeof(int32_t));
    cr_assert_eq(sim_workload_done(w, &first, 5e6, generated, 1), 0);
    double at = sim_workload_next_arrival(w);
    cr_assert(at >= 5e6 && at < INFINITY);
    cr_assert_eq(sim_workload_pop(w, &second, error, sizeof error), 1);
    cr_assert_gt(second.prompt_len, first_len + generated);
    cr_assert_eq(memcmp(second.prompt, copy, (first_len + generated) * sizeof(int32_t)), 0,
                 "turn 2 does not start with turn 1's prompt and answer");
    cr_assert(sim_workload_exhausted(w));
    free(copy);
    free(first.answer);
    cr_assert_eq(sim_workload_done(w, &second, at + 1e6, second.answer_len, 1), 0);
    free(second.answer);
    sim_workload_destroy(w);
}

Test(sim_workload, conversations_share_system_prompts)
{
    sim_synthetic_params_t p = sim_synthetic_defaults();
    p.num_requests = 40;
    p.turns = 1.0;
    p.system_prompts = 2;
    p.system_len = 400;
    sim_workload_t *w = NULL;
    cr_assert_eq(sim_workload_synthetic(&p, &w, error, sizeof error), 0, "%s", error);
    int32_t heads[40][32];
    for (int i = 0; i < 40; i++) {
        sim_request_t r;
        cr_assert_eq(sim_workload_pop(w, &r, error, sizeof error), 1);
        cr_assert_geq(r.prompt_len, 32u);
        memcpy(heads[i], r.prompt, sizeof heads[i]);
        sim_workload_done(w, &r, r.arrival_us, r.answer_len, 1);
        free(r.answer);
    }
    /* 40 single-turn conversations over 2 system prompts: at most 2
     * distinct prompt heads, and some head shared by many. */
    int distinct = 0, same_as_first = 0;
    for (int i = 0; i < 40; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++)
            seen = memcmp(heads[i], heads[j], sizeof heads[i]) == 0;
        distinct += !seen;
        same_as_first += memcmp(heads[i], heads[0], sizeof heads[0]) == 0;
    }
    cr_assert_leq(distinct, 2);
    cr_assert_geq(same_as_first, 10);
    sim_workload_destroy(w);
}

Test(sim_workload, aborted_turn_returns_its_budget)
{
    sim_synthetic_params_t p = sim_synthetic_defaults();
    p.num_requests = 50;
    p.turns = 5.0;
    sim_workload_t *w = NULL;
    cr_assert_eq(sim_workload_synthetic(&p, &w, error, sizeof error), 0, "%s", error);
    uint64_t n = 0;
    while (!sim_workload_exhausted(w) && n < 1000) {
        double at = sim_workload_next_arrival(w);
        cr_assert(at < INFINITY);
        sim_request_t r;
        cr_assert_eq(sim_workload_pop(w, &r, error, sizeof error), 1);
        /* Every other request ends aborted: its conversation ends. */
        sim_workload_done(w, &r, at + 10.0, 0, (int)(n % 2));
        free(r.answer);
        n++;
    }
    cr_assert_eq(n, 50u, "aborted turns must be replaced by new conversations");
    sim_workload_destroy(w);
}

Test(sim_workload, bad_synthetic_parameters)
{
    sim_workload_t *w = NULL;
    sim_synthetic_params_t p = sim_synthetic_defaults();
    p.rate = 0.0;
    cr_assert_eq(sim_workload_synthetic(&p, &w, error, sizeof error), -1);
    cr_assert(strstr(error, "rate") != NULL, "%s", error);
    p = sim_synthetic_defaults();
    p.copy_prob = 1.5;
    cr_assert_eq(sim_workload_synthetic(&p, &w, error, sizeof error), -1);
    cr_assert(strstr(error, "probabilit") != NULL, "%s", error);
    p = sim_synthetic_defaults();
    p.turns = 0.5;
    cr_assert_eq(sim_workload_synthetic(&p, &w, error, sizeof error), -1);
    cr_assert_null(w);
}

Test(sim_workload, answers_quote_the_prompt)
{
    int32_t prompt[64], answer[200];
    for (int i = 0; i < 64; i++)
        prompt[i] = i == 10 ? SIM_STOP_TOKEN : 1000 + i;
    sim_answer_generate(3, 4, prompt, 64, 200, 1.0, 1, answer);
    cr_assert_eq(answer[199], SIM_STOP_TOKEN);
    int copied = 0;
    for (int i = 0; i < 199; i++) {
        cr_assert_neq(answer[i], SIM_STOP_TOKEN, "stop token copied at %d", i);
        copied += answer[i] >= 1000 && answer[i] < 1064;
    }
    cr_assert_geq(copied, 190, "copy_prob 1 copied only %d tokens", copied);
    /* Copied spans are consecutive prompt tokens. */
    int runs = 0;
    for (int i = 1; i < 199; i++)
        runs += answer[i] == answer[i - 1] + 1;
    cr_assert_geq(runs, 150);
    sim_answer_generate(3, 4, prompt, 64, 200, 0.0, 0, answer);
    copied = 0;
    for (int i = 0; i < 200; i++) {
        cr_assert_neq(answer[i], SIM_STOP_TOKEN);
        cr_assert_lt(answer[i], (int32_t)SIM_TEXT_TOKENS);
        copied += answer[i] >= 1000 && answer[i] < 1064;
    }
    cr_assert_leq(copied, 2);
}

static char *write_temp(const char *suffix, const char *text)
{
    char *path = malloc(64);
    snprintf(path, 64, "/tmp/kvrt-sim-test-XXXXXX%s", suffix);
    int fd = mkstemps(path, (int)strlen(suffix));
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

Test(sim_workload, trace_tokens_follow_hash_ids)
{
    /* Requests 1 and 2 share their first block (id 0); request 3 shares
     * nothing. Request 2's second block is partial. */
    char *path = write_temp(".jsonl",
        "{\"timestamp\": 0, \"input_length\": 1024, \"output_length\": 10, \"hash_ids\": [0, 1]}\n"
        "{\"timestamp\": 250, \"input_length\": 700, \"output_length\": 3, \"hash_ids\": [0, 2]}\n"
        "{\"timestamp\": 1000, \"input_length\": 100, \"output_length\": 7, \"hash_ids\": [3]}\n");
    trace_t trace;
    cr_assert_eq(trace_load(path, TRACE_FORMAT_AUTO, &trace, error, sizeof error), 0, "%s",
                 error);
    sim_trace_params_t tp = {.seed = 1, .time_scale = 2.0, .copy_prob = 0.3};
    sim_workload_t *w = NULL;
    cr_assert_eq(sim_workload_trace(&trace, &tp, &w, error, sizeof error), 0, "%s", error);
    cr_assert_eq(sim_workload_planned(w), 3u);
    int32_t *first = malloc(1024 * sizeof(int32_t));
    const double want_us[] = {0.0, 500e3, 2000e3};
    const uint32_t want_in[] = {1024, 700, 100}, want_out[] = {10, 3, 7};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(sim_workload_next_arrival(w), want_us[i]);
        sim_request_t r;
        cr_assert_eq(sim_workload_pop(w, &r, error, sizeof error), 1, "%s", error);
        cr_assert_eq(r.prompt_len, want_in[i]);
        cr_assert_eq(r.max_new_tokens, want_out[i]);
        cr_assert_eq(r.answer_len, want_out[i]);
        for (uint32_t j = 0; j < r.answer_len; j++)
            cr_assert_neq(r.answer[j], SIM_STOP_TOKEN, "trace answers end by length");
        if (i == 0)
            memcpy(first, r.prompt, 1024 * sizeof(int32_t));
        else if (i == 1) {
            cr_assert_eq(memcmp(r.prompt, first, 512 * sizeof(int32_t)), 0);
            cr_assert_neq(memcmp(r.prompt + 512, first + 512, 188 * sizeof(int32_t)), 0);
        } else {
            cr_assert_neq(memcmp(r.prompt, first, 100 * sizeof(int32_t)), 0);
        }
        free(r.answer);
    }
    cr_assert(sim_workload_exhausted(w));
    cr_assert_eq(sim_workload_next_arrival(w), INFINITY);
    sim_workload_destroy(w);
    /* The derivation is pure and position-dependent. */
    int32_t a[8], b[8];
    sim_trace_block_tokens(5, 0, 8, a);
    sim_trace_block_tokens(5, 4, 4, b);
    cr_assert_eq(memcmp(a + 4, b, 4 * sizeof(int32_t)), 0);
    cr_assert_neq(a[0], a[1]);
    free(first);
    trace_free(&trace);
    unlink(path);
    free(path);
}

Test(sim_workload, bad_trace_parameters)
{
    char *path = write_temp(".jsonl",
        "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [0]}\n");
    trace_t trace;
    cr_assert_eq(trace_load(path, TRACE_FORMAT_AUTO, &trace, error, sizeof error), 0, "%s",
                 error);
    sim_workload_t *w = NULL;
    sim_trace_params_t tp = {.seed = 1, .time_scale = 0.0};
    cr_assert_eq(sim_workload_trace(&trace, &tp, &w, error, sizeof error), -1);
    cr_assert(strstr(error, "time scale") != NULL, "%s", error);
    cr_assert_null(w);
    trace_free(&trace);
    unlink(path);
    free(path);
}
