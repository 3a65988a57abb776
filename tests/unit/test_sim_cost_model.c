/*
 * test_sim_cost_model.c - kvrt-sim's GPU step-time model: monotone in every
 * input and parameter, defaults in the range public figures give for
 * Llama-3.1-8B on one H100, bad parameters named.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "sim_cost_model.h"

static double cost(const sim_cost_model_t *m, uint32_t seqs, uint64_t q, uint64_t kv,
                   uint64_t pairs)
{
    sim_step_shape_t s = {.seqs = seqs, .query_tokens = q, .kv_read_tokens = kv,
                          .attention_pairs = pairs, .draft_positions = 2};
    return sim_step_time_us(m, &s);
}

Test(sim_cost_model, empty_step_costs_nothing)
{
    sim_cost_model_t m = sim_cost_model_default();
    sim_step_shape_t s = {0};
    cr_assert_eq(sim_step_time_us(&m, &s), 0.0);
}

Test(sim_cost_model, monotone_in_every_input)
{
    sim_cost_model_t m = sim_cost_model_default();
    /* Walk each input up from several starting shapes: time never drops,
     * and it rises strictly once past the weight-bound floor. */
    const uint64_t starts[] = {1, 64, 300, 4096, 100000};
    for (size_t i = 0; i < sizeof(starts) / sizeof(starts[0]); i++) {
        uint64_t b = starts[i];
        double base = cost(&m, 8, b, b, b);
        cr_assert_gt(cost(&m, 9, b, b, b), base);
        cr_assert_geq(cost(&m, 8, b + 1, b, b), base);
        cr_assert_gt(cost(&m, 8, b, b + 1000, b), base);
        cr_assert_gt(cost(&m, 8, b, b, b + 1000000), base);
        sim_step_shape_t s = {.seqs = 8, .query_tokens = b, .kv_read_tokens = b,
                              .attention_pairs = b, .draft_positions = 3};
        cr_assert_gt(sim_step_time_us(&m, &s), base);
    }
    /* Query tokens: flat below the weight floor, linear above it. */
    double floor_us = m.weights_ms * 1000.0;
    uint64_t knee = (uint64_t)(floor_us / m.prefill_us_per_token);
    cr_assert_eq(cost(&m, 1, 1, 0, 0), cost(&m, 1, knee / 2, 0, 0));
    cr_assert_gt(cost(&m, 1, knee * 2, 0, 0), cost(&m, 1, knee, 0, 0));
}

Test(sim_cost_model, monotone_in_every_parameter)
{
    sim_cost_model_t base = sim_cost_model_default();
    double *fields[7];
    sim_cost_model_t m;
    /* Shapes on both sides of the weight floor. */
    const uint64_t queries[] = {16, 8192};
    for (size_t q = 0; q < 2; q++) {
        double before = cost(&base, 16, queries[q], 50000, 1000000);
        for (int f = 0; f < 7; f++) {
            m = base;
            fields[0] = &m.overhead_us;
            fields[1] = &m.per_seq_us;
            fields[2] = &m.prefill_us_per_token;
            fields[3] = &m.weights_ms;
            fields[4] = &m.kv_read_ns_per_token;
            fields[5] = &m.attn_ns_per_pair;
            fields[6] = &m.draft_us_per_position;
            *fields[f] *= 2.0;
            cr_assert_geq(cost(&m, 16, queries[q], 50000, 1000000), before,
                          "doubling parameter %d lowered the step time", f);
        }
    }
}

Test(sim_cost_model, shape_accumulates_prefill_and_decode)
{
    sim_step_shape_t s = {0};
    sim_step_add_prefill(&s, 4, 10);
    /* 4 tokens after 10: 4 * 10 + (1 + 2 + 3 + 4) pairs. */
    cr_assert_eq(s.attention_pairs, 50u);
    cr_assert_eq(s.query_tokens, 4u);
    cr_assert_eq(s.kv_read_tokens, 10u);
    sim_step_add_decode(&s, 5, 1000);
    cr_assert_eq(s.seqs, 2u);
    cr_assert_eq(s.query_tokens, 9u);
    cr_assert_eq(s.kv_read_tokens, 1010u);
    cr_assert_eq(s.attention_pairs, 50u);
    cr_assert_eq(s.draft_positions, 0u);
}

Test(sim_cost_model, defaults_resemble_an_8b_model_on_one_h100)
{
    sim_cost_model_t m = sim_cost_model_default();
    const char *what = NULL;
    cr_assert_eq(sim_cost_model_validate(&m, &what), 0);
    /* Batch-1 decode at 1k context: 6-8 ms per token. */
    sim_step_shape_t one = {0};
    cr_assert_eq(sim_step_time_us(&m, &one), 0.0);
    sim_step_add_decode(&one, 1, 1024);
    double t1 = sim_step_time_us(&m, &one);
    cr_assert(t1 > 6000.0 && t1 < 8000.0, "batch-1 decode %.0f us", t1);
    /* An 8k-token prompt in one chunk: 15k-30k prefill tokens/s. */
    sim_step_shape_t pre = {0};
    sim_step_add_prefill(&pre, 8192, 0);
    double tps = 8192.0 / (sim_step_time_us(&m, &pre) / 1e6);
    cr_assert(tps > 15000.0 && tps < 30000.0, "prefill %.0f tokens/s", tps);
    /* 128 decodes at 2k context: batching raises throughput well above
     * batch 1 while the step stays under 30 ms. */
    sim_step_shape_t batch = {0};
    for (int i = 0; i < 128; i++)
        sim_step_add_decode(&batch, 1, 2048);
    double tb = sim_step_time_us(&m, &batch);
    cr_assert(tb < 30000.0, "batch-128 decode %.0f us", tb);
    cr_assert_gt(128.0 / tb, 10.0 / t1);
}

Test(sim_cost_model, bad_parameters_are_named)
{
    sim_cost_model_t m = sim_cost_model_default();
    const char *what = NULL;
    m.kv_read_ns_per_token = -1.0;
    cr_assert_eq(sim_cost_model_validate(&m, &what), -1);
    cr_assert_str_eq(what, "kv_read_ns_per_token");
    m = sim_cost_model_default();
    m.attn_ns_per_pair = NAN;
    cr_assert_eq(sim_cost_model_validate(&m, &what), -1);
    cr_assert_str_eq(what, "attn_ns_per_pair");
    m = sim_cost_model_default();
    m.weights_ms = 0.0;
    m.overhead_us = 0.0;
    cr_assert_eq(sim_cost_model_validate(&m, &what), -1);
    cr_assert(strstr(what, "one must be positive") != NULL);
}
