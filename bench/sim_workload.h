/*
 * sim_workload.h - where kvrt-sim's requests come from: a seeded synthetic
 * generator of multi-turn conversations (the default), or a Mooncake /
 * Azure trace (bench/trace.h).
 *
 * A workload is pulled by the simulator's clock: sim_workload_next_arrival()
 * says when the next request arrives, sim_workload_pop() hands it over, and
 * sim_workload_done() tells the workload how a request ended. The synthetic
 * generator is closed-loop: a conversation's next turn is scheduled only
 * when the previous one ends, a think time later, and its prompt extends the
 * previous prompt with the answer actually generated.
 *
 * The simulated model is deterministic: every request carries its reference
 * answer (sim_request_t.answer), the tokens the model emits one after the
 * other. Answers copy spans of their prompt with probability copy_prob per
 * token run, so the n-gram prompt-lookup proposer finds real repetition, and
 * a draft is accepted exactly when it matches the reference (greedy
 * verification). docs/simulator.md describes the model.
 */
#ifndef KVRT_BENCH_SIM_WORKLOAD_H
#define KVRT_BENCH_SIM_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "trace.h"

/* Llama-3 vocabulary: ordinary text tokens are drawn below SIM_TEXT_TOKENS;
 * SIM_STOP_TOKEN (<|eot_id|>) ends an answer. */
#define SIM_VOCAB_SIZE 128256u
#define SIM_TEXT_TOKENS 128000u
#define SIM_STOP_TOKEN 128009

typedef struct sim_synthetic_params {
    uint64_t seed;
    uint32_t num_requests;      /* requests generated in all (turns included) */
    double rate;                /* mean request arrivals per second (Poisson) */
    uint32_t system_prompts;    /* distinct system prompts conversations share */
    uint32_t system_len;        /* mean system prompt tokens */
    double turns;               /* mean turns per conversation (>= 1) */
    uint32_t user_len;          /* mean new user tokens per turn */
    uint32_t output_len;        /* mean answer tokens */
    uint32_t max_output;        /* max_new_tokens of every request */
    uint32_t max_prompt;        /* a conversation ends before its prompt passes this */
    double think_s;             /* mean pause between a turn's end and the next */
    double copy_prob;           /* chance an answer run copies from the prompt */
    double abort_prob;          /* chance a client aborts a request */
    double abort_after_s;       /* mean time after arrival of such an abort */
    double deadline_ms;         /* TTFT deadline of every request; 0 none */
    double high_priority;       /* fraction of conversations at priority 1 */
} sim_synthetic_params_t;

/* The defaults of kvrt-sim (docs/simulator.md). */
sim_synthetic_params_t sim_synthetic_defaults(void);

typedef struct sim_trace_params {
    uint64_t seed;              /* answers' tokens */
    double time_scale;          /* arrival times are multiplied by this */
    uint32_t max_requests;      /* 0: the whole trace */
    double copy_prob;
    double deadline_ms;
} sim_trace_params_t;

/* One request, as the client sends it. */
typedef struct sim_request {
    uint64_t id;                /* 0, 1, ... in arrival order */
    double arrival_us;
    double abort_us;            /* when the client aborts; INFINITY: never */
    double deadline_us;         /* TTFT deadline, absolute; INFINITY: none */
    uint32_t priority;          /* 0 normal, 1 high */
    const int32_t *prompt;      /* valid until the next pop or done call */
    uint32_t prompt_len;
    uint32_t max_new_tokens;
    /* The tokens the simulated model emits, answer_len of them (an answer
     * that ends by stop token ends with SIM_STOP_TOKEN). malloc'ed: the
     * caller owns it and frees it with free(). */
    int32_t *answer;
    uint32_t answer_len;
    uint64_t cookie;            /* the workload's, passed back to done() */
} sim_request_t;

typedef struct sim_workload sim_workload_t;

/*
 * Creates a synthetic workload. Returns 0, or -1 with a message in
 * error[0..error_size) (parameters out of range, no memory).
 */
int sim_workload_synthetic(const sim_synthetic_params_t *params, sim_workload_t **out,
                           char *error, size_t error_size);

/*
 * Creates a trace workload from a loaded trace, which must outlive it.
 * Token ids are derived from the trace's hash ids (sim_trace_block_tokens).
 * Returns 0, or -1 with a message.
 */
int sim_workload_trace(const trace_t *trace, const sim_trace_params_t *params,
                       sim_workload_t **out, char *error, size_t error_size);

void sim_workload_destroy(sim_workload_t *workload);

/* Arrival time (us) of the next request; INFINITY when none is pending now
 * (a closed-loop workload may still produce more after a done()). */
double sim_workload_next_arrival(const sim_workload_t *workload);

/*
 * Takes the next arriving request. Returns 1 and fills *out, 0 when none is
 * pending, -1 when memory runs out (message in error).
 */
int sim_workload_pop(sim_workload_t *workload, sim_request_t *out, char *error,
                     size_t error_size);

/*
 * Reports the end of a request at now_us: the model emitted `generated`
 * tokens of its answer (answer[0..generated)); aborted or failed requests
 * end their conversation. Returns 0, or -1 when memory runs out.
 */
int sim_workload_done(sim_workload_t *workload, const sim_request_t *request,
                      double now_us, uint32_t generated, int completed);

/* Requests handed out so far, and an upper bound of the total (exact for
 * traces; for the synthetic generator the planned count, which aborts can
 * only lower). */
uint64_t sim_workload_popped(const sim_workload_t *workload);
uint64_t sim_workload_planned(const sim_workload_t *workload);

/* True when no request will ever arrive again. */
int sim_workload_exhausted(const sim_workload_t *workload);

/*
 * The token ids of tokens [first, first + count) of the trace block with
 * `hash_id` (a block of TRACE_BLOCK_TOKENS tokens). Pure: the same id gives
 * the same tokens, so equal Mooncake hash ids give equal prefixes and kvrt's
 * chained block hashes find them; ids never equal SIM_STOP_TOKEN.
 */
void sim_trace_block_tokens(int64_t hash_id, uint32_t first, uint32_t count,
                            int32_t *out);

/*
 * Writes a reference answer of `len` tokens for a prompt: runs of random
 * text tokens and, with probability copy_prob per run, spans of 4..32
 * tokens copied from the prompt (never the stop token). When end_with_stop
 * is set the last token is SIM_STOP_TOKEN.
 */
void sim_answer_generate(uint64_t seed, uint64_t stream, const int32_t *prompt,
                         uint32_t prompt_len, uint32_t len, double copy_prob,
                         int end_with_stop, int32_t *out);

#endif /* KVRT_BENCH_SIM_WORKLOAD_H */
