/*
 * sim_cost_model.c - the GPU step-time model of kvrt-sim (see
 * sim_cost_model.h for the formula, docs/simulator.md for the defaults).
 */
#include "sim_cost_model.h"

#include <math.h>

/*
 * Llama-3.1-8B: 8.03e9 parameters, 32 layers, 32 query heads and 8 KV heads
 * of 128, fp16. One H100 SXM: 989 TFLOP/s dense fp16, 3.35 TB/s HBM3.
 *  - weights_ms: 16.06 GB of weights at 80% of peak bandwidth (2.68 TB/s)
 *    = 6.0 ms, the batch-1 decode step serving stacks report for this pair.
 *  - prefill_us_per_token: 2 * 8.03e9 flop per token at 40% of peak
 *    (396 TFLOP/s) = 40 us, i.e. ~25k tokens/s before attention.
 *  - kv_read_ns_per_token: 32 layers * 2 * 8 heads * 128 * 2 bytes = 128 KiB
 *    per token at 2.68 TB/s = 49 ns.
 *  - attn_ns_per_pair: 4 * 32 layers * 32 heads * 128 = 524,288 flop per
 *    (query, key) pair at 396 TFLOP/s = 1.3 ns.
 *  - overhead_us, per_seq_us: launch gaps, logits and sampling, estimated.
 *  - draft_us_per_position: a ~1B-parameter draft model (Llama-3.2-1B,
 *    2.5 GB of weights) is weight-bound like the target: 2.5 GB at 2.68
 *    TB/s = 0.93 ms, plus launch overhead: 1 ms per drafted position.
 */
sim_cost_model_t sim_cost_model_default(void)
{
    return (sim_cost_model_t){
        .overhead_us = 300.0,
        .per_seq_us = 5.0,
        .prefill_us_per_token = 40.0,
        .weights_ms = 6.0,
        .kv_read_ns_per_token = 49.0,
        .attn_ns_per_pair = 1.3,
        .draft_us_per_position = 1000.0,
    };
}

int sim_cost_model_validate(const sim_cost_model_t *model, const char **what_out)
{
    const struct {
        const char *name;
        double value;
    } params[] = {
        {"overhead_us", model->overhead_us},
        {"per_seq_us", model->per_seq_us},
        {"prefill_us_per_token", model->prefill_us_per_token},
        {"weights_ms", model->weights_ms},
        {"kv_read_ns_per_token", model->kv_read_ns_per_token},
        {"attn_ns_per_pair", model->attn_ns_per_pair},
        {"draft_us_per_position", model->draft_us_per_position},
    };
    for (unsigned i = 0; i < sizeof(params) / sizeof(params[0]); i++) {
        if (!isfinite(params[i].value) || params[i].value < 0.0) {
            *what_out = params[i].name;
            return -1;
        }
    }
    /* A step that costs nothing would let the clock stand still while the
     * simulator loops: one of the per-step terms must be positive. */
    if (model->weights_ms <= 0.0 && model->overhead_us <= 0.0) {
        *what_out = "weights_ms or overhead_us (one must be positive)";
        return -1;
    }
    return 0;
}

/* Context tokens (before position `computed`) that queries starting at
 * `computed` read through a window of w positions: the first query's window
 * reaches furthest back, to computed - (w - 1). */
static uint64_t window_context(uint32_t computed, uint32_t w)
{
    return computed < w - 1 ? computed : w - 1u;
}

/* Pairs of n queries at positions c.. that each read at most w positions:
 * query j reads min(c + j + 1, w) keys. */
static uint64_t window_pairs(uint64_t n, uint64_t c, uint64_t w)
{
    uint64_t first = c + 1;
    if (first >= w)
        return n * w;
    uint64_t growing = w - first < n ? w - first : n; /* queries below the cap */
    return growing * first + growing * (growing - 1) / 2 + (n - growing) * w;
}

void sim_step_add_prefill(sim_step_shape_t *shape, uint32_t new_tokens,
                          uint32_t computed_tokens)
{
    shape->seqs++;
    shape->query_tokens += new_tokens;
    shape->kv_read_tokens += computed_tokens;
    /* Causal attention: token j of the chunk sees the c tokens before the
     * chunk and j + 1 of its own, so the chunk does n * c + n * (n + 1) / 2. */
    uint64_t n = new_tokens;
    shape->attention_pairs += n * computed_tokens + n * (n + 1) / 2;
    if (shape->window) {
        shape->window_kv_read_tokens += window_context(computed_tokens, shape->window);
        shape->window_attention_pairs += window_pairs(n, computed_tokens, shape->window);
    }
}

void sim_step_add_decode(sim_step_shape_t *shape, uint32_t query_tokens,
                         uint32_t computed_tokens)
{
    shape->seqs++;
    shape->query_tokens += query_tokens;
    /* Decode attention is bound by reading the context's KV once per
     * sequence (the k + 1 verify queries share that read); its math is
     * small enough to hide under the read. */
    shape->kv_read_tokens += computed_tokens;
    if (shape->window)
        shape->window_kv_read_tokens += window_context(computed_tokens, shape->window);
}

double sim_step_time_us(const sim_cost_model_t *model, const sim_step_shape_t *shape)
{
    if (shape->seqs == 0 && shape->query_tokens == 0)
        return 0.0;
    double linear = (double)shape->query_tokens * model->prefill_us_per_token;
    double weights = model->weights_ms * 1000.0;
    if (linear < weights)
        linear = weights;
    double kv_read = (double)shape->kv_read_tokens, pairs = (double)shape->attention_pairs;
    if (shape->window) {
        double share = shape->window_share;
        kv_read = (1.0 - share) * kv_read + share * (double)shape->window_kv_read_tokens;
        pairs = (1.0 - share) * pairs + share * (double)shape->window_attention_pairs;
    }
    return model->overhead_us + (double)shape->seqs * model->per_seq_us + linear +
           kv_read * model->kv_read_ns_per_token / 1000.0 +
           pairs * model->attn_ns_per_pair / 1000.0 +
           (double)shape->draft_positions * model->draft_us_per_position;
}
