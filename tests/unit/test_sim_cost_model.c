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

/* Keys read by n queries at positions c.. of a window of w, one by one. */
static uint64_t pairs_by_hand(uint64_t n, uint64_t c, uint64_t w)
{
    uint64_t sum = 0;
    for (uint64_t j = 0; j < n; j++)
        sum += c + j + 1 < w ? c + j + 1 : w;
    return sum;
}

Test(sim_cost_model, window_layers_read_only_their_window)
{
    const uint32_t windows[] = {1, 2, 7, 128, 4096};
    const uint32_t counts[] = {0, 1, 5, 127, 128, 129, 3000};
    for (size_t wi = 0; wi < sizeof(windows) / sizeof(windows[0]); wi++) {
        for (size_t ni = 0; ni < sizeof(counts) / sizeof(counts[0]); ni++) {
            for (size_t ci = 0; ci < sizeof(counts) / sizeof(counts[0]); ci++) {
                uint32_t w = windows[wi], n = counts[ni], c = counts[ci];
                sim_step_shape_t s = {.window = w, .window_share = 0.5};
                sim_step_add_prefill(&s, n, c);
                cr_assert_eq(s.window_attention_pairs, pairs_by_hand(n, c, w),
                             "pairs of %u after %u, window %u", n, c, w);
                /* The first query reads back w - 1 positions at most. */
                cr_assert_eq(s.window_kv_read_tokens, c < w - 1 ? c : w - 1);
                sim_step_add_decode(&s, 5, c);
                cr_assert_eq(s.window_kv_read_tokens, 2 * (uint64_t)(c < w - 1 ? c : w - 1));
                /* Full-attention counts are those of a shape without a window. */
                sim_step_shape_t plain = {0};
                sim_step_add_prefill(&plain, n, c);
                sim_step_add_decode(&plain, 5, c);
                cr_assert_eq(s.attention_pairs, plain.attention_pairs);
                cr_assert_eq(s.kv_read_tokens, plain.kv_read_tokens);
            }
        }
    }
}

Test(sim_cost_model, window_layers_make_long_contexts_cheaper)
{
    sim_cost_model_t m = sim_cost_model_default();
    /* A window longer than every context, or on no layer, costs what full
     * attention costs, to the bit. */
    sim_step_shape_t plain = {0}, wide = {.window = 1u << 20, .window_share = 0.5},
                     none = {.window = 128, .window_share = 0.0};
    sim_step_shape_t *all[] = {&plain, &wide, &none};
    for (int i = 0; i < 3; i++) {
        sim_step_add_prefill(all[i], 2048, 4096);
        for (int k = 0; k < 64; k++)
            sim_step_add_decode(all[i], 1, 8192);
    }
    double full = sim_step_time_us(&m, &plain);
    cr_assert_eq(sim_step_time_us(&m, &wide), full);
    cr_assert_eq(sim_step_time_us(&m, &none), full);
    /* Narrower windows and more window layers never cost more; at 8K
     * contexts half the layers on a 128 window save most of the KV read. */
    double last = full;
    const uint32_t windows[] = {8192, 4096, 1024, 128, 1};
    for (size_t i = 0; i < sizeof(windows) / sizeof(windows[0]); i++) {
        double share_last = full + 1.0;
        for (double share = 0.0; share <= 1.0; share += 0.25) {
            sim_step_shape_t s = {.window = windows[i], .window_share = share};
            sim_step_add_prefill(&s, 2048, 4096);
            for (int k = 0; k < 64; k++)
                sim_step_add_decode(&s, 1, 8192);
            double t = sim_step_time_us(&m, &s);
            cr_assert_leq(t, share_last, "window %u share %.2f", windows[i], share);
            share_last = t;
            if (share == 0.5) {
                cr_assert_leq(t, last, "window %u", windows[i]);
                last = t;
            }
        }
    }
    sim_step_shape_t s = {.window = 128, .window_share = 0.5};
    for (int k = 0; k < 64; k++)
        sim_step_add_decode(&s, 1, 8192);
    sim_step_shape_t d = {0};
    for (int k = 0; k < 64; k++)
        sim_step_add_decode(&d, 1, 8192);
    double kv_full = (double)d.kv_read_tokens * m.kv_read_ns_per_token / 1000.0;
    double saved = sim_step_time_us(&m, &d) - sim_step_time_us(&m, &s);
    cr_assert(saved > 0.45 * kv_full && saved < 0.5 * kv_full, "saved %.0f of %.0f us", saved,
              kv_full);
}
