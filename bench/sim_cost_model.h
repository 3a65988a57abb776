/*
 * sim_cost_model.h - how long one engine step takes on the GPU, for
 * kvrt-sim. The simulator never runs a model: it asks this model how long
 * the batch the scheduler planned would take, and advances its clock by
 * that much.
 *
 * A step is described by what the GPU has to do (sim_step_shape_t) and
 * costs, in microseconds,
 *
 *   overhead_us + seqs * per_seq_us                    launches, sampling
 * + max(query_tokens * prefill_us_per_token,           linear layers:
 *       weights_ms * 1000)                             compute- or weight-bound
 * + kv_read_tokens * kv_read_ns_per_token / 1000       KV the attention reads
 * + attention_pairs * attn_ns_per_pair / 1000          prefill attention math
 * + draft_positions * draft_us_per_position            a draft model, if any
 *
 * query_tokens counts every token that goes through the model this step
 * (prefill chunk tokens, one per decode, 1 + k per speculative verify);
 * kv_read_tokens the cached tokens attention reads (each decode or verify
 * query group reads its whole context once; a prefill chunk reads the
 * context before it once); attention_pairs the (query, key) pairs of
 * prefill chunks, n * (c + (n + 1) / 2) for a chunk of n tokens after c;
 * draft_positions the sequential forward passes of a draft model (the
 * longest draft of the batch; 0 without a draft model).
 * Every term grows with its input, so the model is monotone in each.
 * docs/simulator.md derives the defaults (Llama-3.1-8B, fp16, one H100).
 *
 * Sliding-window layers (Gemma 2/3, gpt-oss, Mistral): when the shape's
 * window is W > 0, a window_share of the layers reads only the last W
 * positions. Those layers' part of the two attention terms counts the
 * window's tokens and pairs (window_kv_read_tokens, window_attention_pairs)
 * instead of the whole context's:
 *
 *   kv_read = (1 - share) * kv_read_tokens + share * window_kv_read_tokens
 *
 * and the same for pairs. With W = 0 (a zeroed shape) the model is the one
 * above, to the bit.
 */
#ifndef KVRT_BENCH_SIM_COST_MODEL_H
#define KVRT_BENCH_SIM_COST_MODEL_H

#include <stdint.h>

typedef struct sim_cost_model {
    double overhead_us;          /* fixed GPU-side cost of every step */
    double per_seq_us;           /* per scheduled sequence (sampling, metadata) */
    double prefill_us_per_token; /* compute-bound linear layers, per query token */
    double weights_ms;           /* reading the weights once: the floor of a step */
    double kv_read_ns_per_token; /* reading one token's K and V of every layer */
    double attn_ns_per_pair;     /* attention math per (query, key) pair */
    double draft_us_per_position;/* one draft-model step for the whole batch */
} sim_cost_model_t;

/* What one step asks of the GPU. */
typedef struct sim_step_shape {
    uint32_t seqs;               /* sequences in the batch */
    uint64_t query_tokens;       /* tokens run through the model */
    uint64_t kv_read_tokens;     /* context tokens attention reads */
    uint64_t attention_pairs;    /* prefill (query, key) pairs */
    uint32_t draft_positions;    /* draft-model steps run before this one */
    /* Sliding-window layers: set window and window_share before adding
     * sequences; the add functions fill the two counts. */
    uint32_t window;             /* positions a window layer reads; 0: none */
    double window_share;         /* window layers / all layers, in [0, 1] */
    uint64_t window_kv_read_tokens;  /* context tokens in the queries' windows */
    uint64_t window_attention_pairs; /* prefill pairs within the window */
} sim_step_shape_t;

/* Llama-3.1-8B in fp16 on one H100 SXM (docs/simulator.md). */
sim_cost_model_t sim_cost_model_default(void);

/*
 * Checks every parameter is finite and >= 0, and that a step cannot cost
 * nothing (weights_ms or overhead_us > 0). Returns 0, or -1 with the
 * offending parameter's name in *what_out.
 */
int sim_cost_model_validate(const sim_cost_model_t *model, const char **what_out);

/* Adds a prefill chunk of `new_tokens` after `computed_tokens` cached ones
 * (and, with a window, what its window layers read). */
void sim_step_add_prefill(sim_step_shape_t *shape, uint32_t new_tokens,
                          uint32_t computed_tokens);

/* Adds a decode (query_tokens 1) or speculative verify (1 + k) of a sequence
 * whose context already holds `computed_tokens`. */
void sim_step_add_decode(sim_step_shape_t *shape, uint32_t query_tokens,
                         uint32_t computed_tokens);

/* Microseconds the step takes; 0 for an empty step. */
double sim_step_time_us(const sim_cost_model_t *model, const sim_step_shape_t *shape);

#endif /* KVRT_BENCH_SIM_COST_MODEL_H */
