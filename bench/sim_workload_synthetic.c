/*
 * sim_workload_synthetic.c - kvrt-sim's default workload: multi-turn
 * conversations that share a few system prompts.
 *
 * Conversations start as a Poisson process at rate / turns per second, so
 * requests arrive at about `rate` per second once turns are counted. Each
 * picks one of `system_prompts` system prompts and a number of turns
 * (geometric, mean `turns`). Turn t's prompt is the system prompt, every
 * earlier user message and answer (as generated: a truncated answer stays
 * truncated), and a new user message; it is sent a think time (exponential,
 * mean think_s) after turn t-1 ended. So a conversation's turns share a
 * growing prefix, and all conversations share their system prompt: what
 * prefix caching is for.
 *
 * Lengths are log-normal (sigma 0.8) around their means; an answer longer
 * than max_output is cut there and ends by length, the others end with the
 * stop token. Exactly num_requests requests are generated: turns a
 * conversation loses (abort, prompt limit) go back to the budget and start
 * new conversations.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim_rng.h"
#include "sim_workload_internal.h"

#define LENGTH_SIGMA 0.8

typedef struct conversation {
    uint64_t id;
    sim_rng_t rng;
    uint32_t turn;          /* turns sent so far */
    uint32_t turns_left;    /* turns still to send */
    uint32_t priority;
    double next_us;         /* arrival of its next turn */
    int32_t *history;
    uint32_t len, capacity;
} conversation_t;

typedef struct synthetic {
    sim_workload_t base;
    sim_synthetic_params_t p;
    sim_rng_t arrivals;
    double next_new_us;     /* next conversation start; INFINITY: none planned */
    uint64_t started;       /* conversations started */
    uint64_t planned;       /* requests sent plus turns still planned */
    int32_t **system;       /* the shared system prompts */
    uint32_t *system_len;
    conversation_t **heap;  /* waiting for their next turn, by next_us */
    size_t heap_len, heap_capacity;
} synthetic_t;

static uint32_t draw_length(sim_rng_t *rng, uint32_t mean, uint32_t max)
{
    double x = sim_rng_lognormal(rng, (double)mean, LENGTH_SIGMA);
    if (!(x >= 1.0))
        return 1;
    return x >= (double)max ? max : (uint32_t)x;
}

/* ---- the heap of waiting conversations ---------------------------------- */

static int before(const conversation_t *a, const conversation_t *b)
{
    return a->next_us < b->next_us || (a->next_us == b->next_us && a->id < b->id);
}

static int heap_push(synthetic_t *s, conversation_t *c)
{
    if (s->heap_len == s->heap_capacity) {
        size_t capacity = s->heap_capacity ? s->heap_capacity * 2 : 256;
        conversation_t **heap = realloc(s->heap, capacity * sizeof(*heap));
        if (!heap)
            return -1;
        s->heap = heap;
        s->heap_capacity = capacity;
    }
    size_t i = s->heap_len++;
    while (i > 0 && before(c, s->heap[(i - 1) / 2])) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i] = c;
    return 0;
}

static conversation_t *heap_pop(synthetic_t *s)
{
    conversation_t *top = s->heap[0];
    conversation_t *last = s->heap[--s->heap_len];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= s->heap_len)
            break;
        if (child + 1 < s->heap_len && before(s->heap[child + 1], s->heap[child]))
            child++;
        if (!before(s->heap[child], last))
            break;
        s->heap[i] = s->heap[child];
        i = child;
    }
    if (s->heap_len > 0)
        s->heap[i] = last;
    return top;
}

/* ---- conversations ------------------------------------------------------- */

static int history_reserve(conversation_t *c, uint32_t extra)
{
    if (c->len + extra <= c->capacity)
        return 0;
    uint32_t capacity = c->capacity ? c->capacity : 1024;
    while (capacity < c->len + extra)
        capacity *= 2;
    int32_t *history = realloc(c->history, (size_t)capacity * sizeof(*history));
    if (!history)
        return -1;
    c->history = history;
    c->capacity = capacity;
    return 0;
}

static void conversation_free(conversation_t *c)
{
    if (c) {
        free(c->history);
        free(c);
    }
}

/* Plans the next conversation start, if the request budget allows one. */
static void plan_next_start(synthetic_t *s, double after_us)
{
    if (s->planned >= s->p.num_requests) {
        s->next_new_us = INFINITY;
        return;
    }
    double per_second = s->p.rate / s->p.turns;
    s->next_new_us = after_us + sim_rng_exponential(&s->arrivals, 1e6 / per_second);
}

/* Draws the conversation that starts at next_new_us and reserves its turns. */
static conversation_t *start_conversation(synthetic_t *s)
{
    conversation_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->id = s->started++;
    c->rng = sim_rng_stream(s->p.seed, 0x636F6E76ull << 32 | c->id);
    /* Geometric number of turns with mean p.turns, within the budget. */
    uint32_t turns = 1;
    double stop = 1.0 / s->p.turns;
    while (turns < 1000 && sim_rng_unit(&c->rng) >= stop)
        turns++;
    uint64_t room = s->p.num_requests - s->planned;
    if (turns > room)
        turns = (uint32_t)room;
    c->turns_left = turns;
    c->priority = sim_rng_unit(&c->rng) < s->p.high_priority ? 1 : 0;
    c->next_us = s->next_new_us;
    uint32_t which = sim_rng_below(&c->rng, s->p.system_prompts);
    if (history_reserve(c, s->system_len[which] + s->p.user_len) != 0) {
        conversation_free(c);
        return NULL;
    }
    memcpy(c->history, s->system[which], s->system_len[which] * sizeof(int32_t));
    c->len = s->system_len[which];
    s->planned += turns;
    return c;
}

static double synthetic_next_arrival(const sim_workload_t *w)
{
    const synthetic_t *s = (const synthetic_t *)w;
    double next = s->next_new_us;
    if (s->heap_len > 0 && s->heap[0]->next_us < next)
        next = s->heap[0]->next_us;
    return next;
}

static int synthetic_pop(sim_workload_t *w, sim_request_t *out, char *error,
                         size_t error_size)
{
    synthetic_t *s = (synthetic_t *)w;
    conversation_t *c;
    if (s->heap_len > 0 && s->heap[0]->next_us < s->next_new_us) {
        c = heap_pop(s);
    } else if (s->next_new_us < INFINITY) {
        c = start_conversation(s);
        if (!c) {
            snprintf(error, error_size, "synthetic workload: out of memory");
            return -1;
        }
        plan_next_start(s, c->next_us);
    } else {
        return 0;
    }
    /* The new user message, kept within max_prompt (done() ends a
     * conversation before its history leaves no room for one). */
    uint32_t user = draw_length(&c->rng, s->p.user_len, s->p.max_prompt - c->len);
    int32_t *answer = NULL;
    uint32_t natural = draw_length(&c->rng, s->p.output_len, UINT32_MAX / 2);
    uint32_t answer_len = natural > s->p.max_output ? s->p.max_output : natural;
    if (history_reserve(c, user + answer_len) != 0 ||
        !(answer = malloc((size_t)answer_len * sizeof(*answer)))) {
        conversation_free(c);
        snprintf(error, error_size, "synthetic workload: out of memory");
        return -1;
    }
    for (uint32_t i = 0; i < user; i++)
        c->history[c->len + i] = (int32_t)sim_rng_below(&c->rng, SIM_TEXT_TOKENS);
    c->len += user;
    sim_answer_generate(s->p.seed, 0x616E7377ull << 32 ^ (c->id << 12 | c->turn),
                        c->history, c->len, answer_len, s->p.copy_prob,
                        natural <= s->p.max_output, answer);
    double abort_us = INFINITY;
    if (sim_rng_unit(&c->rng) < s->p.abort_prob)
        abort_us = c->next_us + sim_rng_exponential(&c->rng, s->p.abort_after_s * 1e6);
    *out = (sim_request_t){
        .arrival_us = c->next_us,
        .abort_us = abort_us,
        .deadline_us = s->p.deadline_ms > 0 ? c->next_us + s->p.deadline_ms * 1e3 : INFINITY,
        .priority = c->priority,
        .prompt = c->history,
        .prompt_len = c->len,
        .max_new_tokens = s->p.max_output,
        .answer = answer,
        .answer_len = answer_len,
        .cookie = (uint64_t)(uintptr_t)c,
    };
    c->turn++;
    c->turns_left--;
    return 1;
}

static int synthetic_done(sim_workload_t *w, const sim_request_t *request, double now_us,
                          uint32_t generated, int completed)
{
    synthetic_t *s = (synthetic_t *)w;
    conversation_t *c = (conversation_t *)(uintptr_t)request->cookie;
    /* The prompt is the history (user message included); the answer joins
     * it as generated. A next turn needs room for at least a short message. */
    int goes_on = completed && c->turns_left > 0 &&
                  (uint64_t)c->len + generated + 16 <= s->p.max_prompt;
    if (goes_on) {
        if (history_reserve(c, generated) != 0)
            return -1;
        memcpy(c->history + c->len, request->answer, generated * sizeof(int32_t));
        c->len += generated;
        c->next_us = now_us + sim_rng_exponential(&c->rng, s->p.think_s * 1e6);
        return heap_push(s, c);
    }
    s->planned -= c->turns_left;
    conversation_free(c);
    if (s->next_new_us == INFINITY)
        plan_next_start(s, now_us);
    return 0;
}

static uint64_t synthetic_planned(const sim_workload_t *w)
{
    return ((const synthetic_t *)w)->p.num_requests;
}

static int synthetic_exhausted(const sim_workload_t *w)
{
    const synthetic_t *s = (const synthetic_t *)w;
    return s->base.popped >= s->p.num_requests;
}

static void synthetic_destroy(sim_workload_t *w)
{
    synthetic_t *s = (synthetic_t *)w;
    for (size_t i = 0; i < s->heap_len; i++)
        conversation_free(s->heap[i]);
    free(s->heap);
    for (uint32_t i = 0; s->system && i < s->p.system_prompts; i++)
        free(s->system[i]);
    free(s->system);
    free(s->system_len);
    free(s);
}

static const sim_workload_ops_t synthetic_ops = {
    .destroy = synthetic_destroy,
    .next_arrival = synthetic_next_arrival,
    .pop = synthetic_pop,
    .done = synthetic_done,
    .planned = synthetic_planned,
    .exhausted = synthetic_exhausted,
};

sim_synthetic_params_t sim_synthetic_defaults(void)
{
    return (sim_synthetic_params_t){
        .seed = 1,
        .num_requests = 10000,
        .rate = 12.0,
        .system_prompts = 8,
        .system_len = 1500,
        .turns = 4.0,
        .user_len = 200,
        .output_len = 250,
        .max_output = 1024,
        .max_prompt = 32768,
        .think_s = 10.0,
        .copy_prob = 0.15,
        .abort_prob = 0.02,
        .abort_after_s = 2.0,
        .deadline_ms = 0.0,
        .high_priority = 0.0,
    };
}

static const char *check_params(const sim_synthetic_params_t *p)
{
    if (p->num_requests == 0)
        return "requests must be at least 1";
    if (!(p->rate > 0.0 && p->rate <= 1e6))
        return "rate must be in (0, 1e6] requests/s";
    if (p->system_prompts == 0 || p->system_prompts > 4096)
        return "system prompts must be 1..4096";
    if (p->system_len == 0 || p->user_len == 0 || p->output_len == 0)
        return "system, user and output lengths must be at least 1";
    if (!(p->turns >= 1.0 && p->turns <= 100.0))
        return "turns must be in [1, 100]";
    if (p->max_output == 0)
        return "max output must be at least 1";
    if (p->max_prompt < 2 * (uint64_t)p->system_len + 32 || p->max_prompt > (1u << 24))
        return "max prompt must be at least twice the system length + 32, at most 2^24";
    if (!(p->think_s >= 0.0 && p->think_s <= 1e6) || !(p->abort_after_s >= 0.0))
        return "think and abort times must be >= 0";
    if (!(p->copy_prob >= 0.0 && p->copy_prob <= 1.0) ||
        !(p->abort_prob >= 0.0 && p->abort_prob <= 1.0) ||
        !(p->high_priority >= 0.0 && p->high_priority <= 1.0))
        return "probabilities must be in [0, 1]";
    if (!(p->deadline_ms >= 0.0))
        return "deadline must be >= 0";
    return NULL;
}

int sim_workload_synthetic(const sim_synthetic_params_t *params, sim_workload_t **out,
                           char *error, size_t error_size)
{
    const char *bad = check_params(params);
    if (bad) {
        snprintf(error, error_size, "synthetic workload: %s", bad);
        return -1;
    }
    synthetic_t *s = calloc(1, sizeof(*s));
    if (!s)
        goto no_memory;
    s->base.ops = &synthetic_ops;
    s->p = *params;
    s->arrivals = sim_rng_stream(params->seed, 0x61727276ull);
    s->system = calloc(params->system_prompts, sizeof(*s->system));
    s->system_len = calloc(params->system_prompts, sizeof(*s->system_len));
    if (!s->system || !s->system_len)
        goto no_memory;
    /* System prompts vary in length around system_len (at most half of
     * max_prompt, so every conversation has room for turns). */
    sim_rng_t rng = sim_rng_stream(params->seed, 0x73797374ull);
    for (uint32_t i = 0; i < params->system_prompts; i++) {
        uint32_t len = draw_length(&rng, params->system_len, params->max_prompt / 2);
        s->system[i] = malloc((size_t)len * sizeof(int32_t));
        if (!s->system[i])
            goto no_memory;
        for (uint32_t j = 0; j < len; j++)
            s->system[i][j] = (int32_t)sim_rng_below(&rng, SIM_TEXT_TOKENS);
        s->system_len[i] = len;
    }
    plan_next_start(s, 0.0);
    *out = &s->base;
    return 0;
no_memory:
    if (s)
        synthetic_destroy(&s->base);
    snprintf(error, error_size, "synthetic workload: out of memory");
    return -1;
}
