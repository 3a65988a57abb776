/*
 * sim_cluster.c - kvrt-sim's multi-node engine loop (sim_cluster.h).
 *
 * Nodes advance on their own clocks; the loop always runs whatever happens
 * first: the next arrival (routed at its arrival time, with the directory
 * and loads as they are then) or the step of the node whose clock is
 * earliest. A step is run whole when it starts, so its cache changes
 * become visible to the router at its start: a few milliseconds early.
 *
 * Each node's cache feeds a KV-event publisher (kvrt_kv_events_attach);
 * after every step and every transfer the node's events are drained into
 * the one directory, exactly as an engine would ship them. The router sees
 * only the directory and the loads each node reports after its steps.
 */
#include "sim_cluster.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EVENT_BATCH 256u
#define DRAIN_BATCH 4096u
#define PROGRESS_EVERY 2048u

enum { PHASE_WHOLE = 0, PHASE_PREFILL = 1, PHASE_DECODE = 2 };

typedef struct crec {
    sim_request_t req;
    int32_t *prompt;            /* own copy while not yet handed to a scheduler */
    uint32_t node;
    int phase;
    int live;
    int running;
    uint32_t emitted;           /* answer tokens committed, all phases */
    uint64_t offered;
    double first_token_us, last_token_us;
} crec_t;

typedef struct pending {
    double ready_us;
    uint64_t rec;
} pending_t;

typedef struct node {
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool;
    kvrt_cache_t *cache;
    kvrt_sched_t *sched;
    kvrt_kv_events_t *events;
    uint64_t id;
    double now_us;              /* the node's clock: when it can next step */
    double nic_free_us;
    pending_t *pending;         /* sorted by ready_us */
    size_t num_pending, pending_cap;
    uint64_t live;              /* added to the scheduler, not ended */
    uint64_t queued_prefill;    /* prompt tokens not yet past their first token */
    uint64_t decoding;
    sim_node_results_t res;
} node_t;

typedef struct cluster {
    const sim_config_t *cfg;
    const sim_cluster_config_t *cc;
    sim_workload_t *workload;
    node_t *nodes;
    uint32_t num_nodes;
    kvrt_ctx_t *ctx;            /* the directory's and router's */
    kvrt_cluster_dir_t *dir;
    kvrt_cluster_router_t *router, *decode_router;
    kvrt_block_hash_t model, decode_model, root;
    crec_t *recs;
    uint64_t num_recs;
    uint64_t live;
    int32_t *tokens;
    kvrt_block_hash_t *keys;
    uint32_t keys_cap;
    int32_t *blocks;
    kvrt_kv_event_t *drain;
    kvrt_seq_info_t ended[EVENT_BATCH];
    sim_samples_t ttft, tpot, e2e;
    uint64_t block_bytes;
    kvrt_cluster_pull_cost_t pull_cost; /* the network and prefill model, kvrt's formula */
    sim_cluster_results_t *res;
    char *error;
    size_t error_size;
} cluster_t;

static int fail(cluster_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(cluster_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, c->error_size, fmt, ap);
    va_end(ap);
    return -1;
}

static int fail_kvrt(cluster_t *c, kvrt_ctx_t *ctx, const char *call, kvrt_status_t st)
{
    return fail(c, "%s: %s: %s", call, kvrt_status_str(st), kvrt_ctx_last_error(ctx));
}

static uint64_t to_ns(double us) { return (uint64_t)(us * 1000.0 + 0.5); }

sim_cluster_config_t sim_cluster_config_default(void)
{
    return (sim_cluster_config_t){.nodes = 1, .router = KVRT_ROUTE_CACHE_AWARE,
                                  .prefill_weight = 1.0, .decode_weight = 20.0,
                                  .sharing = SIM_SHARING_NONE, .net_latency_us = 20.0,
                                  .net_gbps = 200.0};
}

int sim_cluster_config_validate(const sim_cluster_config_t *cc, char *error, size_t size)
{
    if (cc->nodes < 1 || cc->nodes > KVRT_CLUSTER_MAX_NODES) {
        snprintf(error, size, "nodes must be 1..%d", KVRT_CLUSTER_MAX_NODES);
        return -1;
    }
    if (cc->prefill_nodes && (cc->prefill_nodes + cc->decode_nodes != cc->nodes ||
                              cc->decode_nodes == 0)) {
        snprintf(error, size, "--disaggregate P:D needs P + D = --nodes (%u) and D >= 1",
                 cc->nodes);
        return -1;
    }
    if (!(cc->net_gbps > 0) || !(cc->net_latency_us >= 0) || !isfinite(cc->net_gbps) ||
        !isfinite(cc->net_latency_us)) {
        snprintf(error, size, "network: gbps must be > 0 and latency >= 0");
        return -1;
    }
    return 0;
}

/* ---- setup ------------------------------------------------------------------ */

static bool is_decode_node(const cluster_t *c, uint32_t n)
{
    return c->cc->prefill_nodes && n >= c->cc->prefill_nodes;
}

static int open_node(cluster_t *c, uint32_t n)
{
    const sim_config_t *cfg = c->cfg;
    node_t *node = &c->nodes[n];
    kvrt_status_t st = kvrt_ctx_create(NULL, &node->ctx);
    if (st != KVRT_OK)
        return fail(c, "kvrt_ctx_create: %s", kvrt_status_str(st));
    uint32_t blocks = sim_config_kv_blocks(cfg);
    kvrt_pool_params_t pp = {
        .field_mask = KVRT_POOL_PARAM_BASE,
        .layout = {.num_layers = cfg->num_layers, .num_kv_heads = cfg->num_kv_heads,
                   .head_dim = cfg->head_dim, .tokens_per_block = cfg->block_tokens},
        .num_blocks = blocks,
        .base = (void *)(uintptr_t)0x100000000ull, /* engine memory kvrt never touches */
        .base_bytes = (uint64_t)blocks * c->block_bytes,
    };
    kvrt_cache_params_t cp = {.field_mask = KVRT_CACHE_PARAM_POLICY |
                                            KVRT_CACHE_PARAM_FINGERPRINT,
                              .policy = cfg->cache_policy};
    if ((st = kvrt_pool_create(node->ctx, &pp, &node->pool)) != KVRT_OK ||
        (st = kvrt_model_fingerprint("meta-llama/Llama-3.1-8B-Instruct", &pp.layout,
                                     &cp.model_fingerprint)) != KVRT_OK ||
        (st = kvrt_cache_create(node->pool, &cp, &node->cache)) != KVRT_OK ||
        (st = kvrt_kv_events_create(node->ctx, NULL, &node->events)) != KVRT_OK ||
        (st = kvrt_kv_events_attach(node->events, node->cache, KVRT_KV_TIER_GPU)) != KVRT_OK)
        return fail_kvrt(c, node->ctx, "node setup", st);
    uint64_t max_requests = (uint64_t)cfg->max_waiting + cfg->max_seqs + 16;
    kvrt_sched_params_t sp = {
        .field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS | KVRT_SCHED_PARAM_MAX_SEQS |
                      KVRT_SCHED_PARAM_WATERMARK | KVRT_SCHED_PARAM_MAX_REQUESTS |
                      KVRT_SCHED_PARAM_MAX_SEQ_TOKENS | KVRT_SCHED_PARAM_SHARED_PREFILL,
        .max_batch_tokens = cfg->max_batch_tokens,
        .max_seqs = cfg->max_seqs,
        .use_watermark = cfg->watermark,
        .max_requests = max_requests > (1u << 24) ? (1u << 24) : (uint32_t)max_requests,
        .max_seq_tokens = 1u << 20,
        .shared_prefill_min_tokens = cfg->shared_prefill_min_tokens,
    };
    if (cfg->chunk_tokens) {
        sp.field_mask |= KVRT_SCHED_PARAM_CHUNK;
        sp.prefill_chunk_tokens = cfg->chunk_tokens;
    }
    if ((st = kvrt_sched_create(node->ctx, node->pool, node->cache, &sp, &node->sched)) !=
        KVRT_OK)
        return fail_kvrt(c, node->ctx, "kvrt_sched_create", st);
    if ((st = kvrt_cache_root(node->cache, &c->root)) != KVRT_OK)
        return fail_kvrt(c, node->ctx, "kvrt_cache_root", st);
    node->id = n + 1;
    uint64_t epoch;
    kvrt_kv_events_epoch(node->events, &epoch, NULL);
    /* Decode nodes of a disaggregated cluster are routed among themselves:
     * they join the directory under a model id of their own. */
    st = kvrt_cluster_dir_add_node(c->dir, node->id, is_decode_node(c, n) ? &c->decode_model
                                                                          : &c->model, epoch);
    if (st != KVRT_OK)
        return fail_kvrt(c, c->ctx, "kvrt_cluster_dir_add_node", st);
    return 0;
}

static int open_cluster(cluster_t *c)
{
    kvrt_status_t st = kvrt_ctx_create(NULL, &c->ctx);
    if (st != KVRT_OK)
        return fail(c, "kvrt_ctx_create: %s", kvrt_status_str(st));
    kvrt_cluster_dir_params_t dp = {.field_mask = KVRT_CLUSTER_DIR_PARAM_EXPECTED_BLOCKS,
                                    .expected_blocks = sim_config_kv_blocks(c->cfg)};
    if ((st = kvrt_cluster_dir_create(c->ctx, &dp, &c->dir)) != KVRT_OK)
        return fail_kvrt(c, c->ctx, "kvrt_cluster_dir_create", st);
    c->model = (kvrt_block_hash_t){0x6b7672742d73696dull, 1};
    c->decode_model = (kvrt_block_hash_t){0x6b7672742d73696dull, 2};
    kvrt_cluster_router_params_t rp = {
        .field_mask = KVRT_ROUTER_PARAM_POLICY | KVRT_ROUTER_PARAM_PREFILL_WEIGHT |
                      KVRT_ROUTER_PARAM_DECODE_WEIGHT | KVRT_ROUTER_PARAM_TOKENS_PER_BLOCK,
        .policy = c->cc->router, .prefill_weight = c->cc->prefill_weight,
        .decode_weight = c->cc->decode_weight, .tokens_per_block = c->cfg->block_tokens};
    if ((st = kvrt_cluster_router_create(c->dir, &rp, &c->router)) != KVRT_OK)
        return fail_kvrt(c, c->ctx, "kvrt_cluster_router_create", st);
    rp.policy = KVRT_ROUTE_LEAST_LOADED;
    if ((st = kvrt_cluster_router_create(c->dir, &rp, &c->decode_router)) != KVRT_OK)
        return fail_kvrt(c, c->ctx, "kvrt_cluster_router_create", st);
    for (uint32_t n = 0; n < c->num_nodes; n++)
        if (open_node(c, n) != 0)
            return -1;
    return 0;
}

/* ---- events and loads into the directory --------------------------------------- */

static void report_load(cluster_t *c, node_t *node);

static int publish(cluster_t *c, node_t *node)
{
    for (;;) {
        uint32_t n = 0;
        uint64_t epoch = 0;
        kvrt_kv_events_take(node->events, c->drain, DRAIN_BATCH, &n, &epoch);
        if (n == 0)
            break;
        kvrt_status_t st = kvrt_cluster_dir_apply(c->dir, node->id, epoch, c->drain, n);
        if (st == KVRT_ERR_RESYNC) {
            /* Lost events: reload the node's holdings from a snapshot. */
            uint32_t count = 0;
            uint64_t last = 0;
            kvrt_kv_events_snapshot(node->events, NULL, 0, &count, &last);
            kvrt_kv_event_t *snap = malloc((size_t)(count ? count : 1) * sizeof(*snap));
            if (!snap)
                return fail(c, "out of memory for a snapshot");
            st = kvrt_kv_events_snapshot(node->events, snap, count, &count, &last);
            if (st == KVRT_OK)
                st = kvrt_cluster_dir_load_snapshot(c->dir, node->id, epoch, last, snap, count);
            free(snap);
            c->res->resyncs++;
        }
        if (st != KVRT_OK)
            return fail_kvrt(c, c->ctx, "kvrt_cluster_dir_apply", st);
    }
    report_load(c, node);
    return 0;
}

/* What the node would report to the router: its queue and decodes now. */
static void report_load(cluster_t *c, node_t *node)
{
    kvrt_pool_info_t info;
    kvrt_pool_info(node->pool, &info);
    kvrt_cluster_load_t load = {
        .field_mask = KVRT_CLUSTER_LOAD_QUEUED_PREFILL | KVRT_CLUSTER_LOAD_RUNNING_DECODES |
                      KVRT_CLUSTER_LOAD_FREE_BLOCKS,
        .queued_prefill_tokens = node->queued_prefill,
        .running_decodes = node->decoding,
        .free_blocks = info.free_blocks + info.cached_blocks};
    kvrt_cluster_dir_set_load(c->dir, node->id, &load);
}

/* ---- transfers ---------------------------------------------------------------------- */

/* Moving `blocks` from a peer's pool and recomputing them, in us: the
 * cluster layer's pull cost (kvrt_cluster_pull_cost_us), so the simulator
 * decides and times pulls with the formula nodes use. */
static void pull_cost(const cluster_t *c, uint32_t blocks, double *move_us, double *recompute_us)
{
    const uint32_t from_gpu[KVRT_KV_TIERS] = {blocks, 0, 0};
    kvrt_cluster_pull_cost_us(&c->pull_cost, from_gpu, move_us, recompute_us);
}

/* When a transfer of `blocks` between two nodes that may start at now_us
 * ends; both NICs are busy until then. */
static double transfer(cluster_t *c, node_t *from, node_t *to, uint32_t blocks, double now_us)
{
    double start = now_us;
    if (from->nic_free_us > start)
        start = from->nic_free_us;
    if (to->nic_free_us > start)
        start = to->nic_free_us;
    uint64_t bytes = (uint64_t)blocks * c->block_bytes;
    double move_us = 0;
    pull_cost(c, blocks, &move_us, NULL);
    double end = start + move_us;
    from->nic_free_us = to->nic_free_us = end;
    from->res.blocks_out += blocks;
    to->res.blocks_in += blocks;
    c->res->transferred_bytes += bytes;
    return end;
}

/* Caches blocks [first, first + count) of a chain on `to`: allocated,
 * indexed under their content hashes, then released (cached, idle).
 * Returns the blocks placed (fewer when the pool is short of blocks). */
static uint32_t place_blocks(cluster_t *c, node_t *to, uint32_t first, uint32_t count)
{
    kvrt_pool_info_t info;
    kvrt_pool_info(to->pool, &info);
    uint32_t room = info.free_blocks + info.cached_blocks;
    room = room > 64 ? room - 64 : 0; /* leave the running requests their blocks */
    if (count > room)
        count = room;
    if (count == 0 || kvrt_pool_alloc(to->pool, count, c->blocks) != KVRT_OK)
        return 0;
    for (uint32_t i = 0; i < count; i++)
        kvrt_cache_insert(to->cache, c->blocks[i], &c->keys[first + i], NULL, first + i, NULL);
    kvrt_pool_free(to->pool, count, c->blocks);
    return count;
}

/* The blocks of [first, first + count) the peer really holds, in order
 * (looked up, which also counts as a use on the peer). */
static uint32_t peer_holds(node_t *peer, const kvrt_block_hash_t *keys, uint32_t first,
                           uint32_t count)
{
    uint32_t n = 0;
    for (; n < count; n++) {
        int32_t block = KVRT_NULL_BLOCK;
        if (kvrt_cache_lookup(peer->cache, &keys[first + n], NULL, &block) != KVRT_OK ||
            block == KVRT_NULL_BLOCK)
            break;
        kvrt_pool_free(peer->pool, 1, &block);
    }
    return n;
}

/* ---- arrivals ------------------------------------------------------------------------ */

static int hash_prompt(cluster_t *c, const int32_t *prompt, uint32_t len, uint32_t *num_out)
{
    uint32_t tpb = c->cfg->block_tokens;
    uint32_t n = len / tpb;
    if (n > c->keys_cap) {
        kvrt_block_hash_t *k = realloc(c->keys, (size_t)n * sizeof(*k));
        int32_t *b = realloc(c->blocks, (size_t)n * sizeof(*b));
        if (k)
            c->keys = k;
        if (b)
            c->blocks = b;
        if (!k || !b)
            return fail(c, "out of memory for %u block keys", n);
        c->keys_cap = n;
    }
    kvrt_block_hash_t parent = c->root;
    for (uint32_t i = 0; i < n; i++) {
        kvrt_block_hash(&parent, prompt + (size_t)i * tpb, tpb, i * tpb, NULL, &c->keys[i]);
        parent = c->keys[i];
    }
    *num_out = n;
    return 0;
}

static int pending_push(cluster_t *c, node_t *node, double ready_us, uint64_t rec)
{
    if (node->num_pending == node->pending_cap) {
        size_t cap = node->pending_cap ? node->pending_cap * 2 : 64;
        pending_t *p = realloc(node->pending, cap * sizeof(*p));
        if (!p)
            return fail(c, "out of memory");
        node->pending = p;
        node->pending_cap = cap;
    }
    bool idle = (node->live == 0 && node->num_pending == 0) || node->now_us == INFINITY;
    size_t i = node->num_pending++;
    while (i > 0 && node->pending[i - 1].ready_us > ready_us) {
        node->pending[i] = node->pending[i - 1];
        i--;
    }
    node->pending[i] = (pending_t){ready_us, rec};
    if (idle && (node->now_us == INFINITY || node->now_us < ready_us))
        node->now_us = ready_us; /* an idle node wakes when the request is ready */
    return 0;
}

static node_t *node_by_id(cluster_t *c, uint64_t id) { return &c->nodes[id - 1]; }

/* A request arrives: route it, pull what a peer holds when that is cheaper,
 * and queue it on its node. */
static int arrive(cluster_t *c, sim_request_t *req, double now_us)
{
    if (req->id >= c->num_recs)
        return fail(c, "workload produced request %llu of %llu planned",
                    (unsigned long long)req->id, (unsigned long long)c->num_recs);
    crec_t *r = &c->recs[req->id];
    *r = (crec_t){.req = *req, .live = 1,
                  .phase = c->cc->prefill_nodes ? PHASE_PREFILL : PHASE_WHOLE};
    r->prompt = malloc((size_t)req->prompt_len * sizeof(int32_t));
    if (!r->prompt)
        return fail(c, "out of memory for a prompt of %u tokens", req->prompt_len);
    memcpy(r->prompt, req->prompt, (size_t)req->prompt_len * sizeof(int32_t));
    r->req.prompt = NULL;
    c->res->total.submitted++;
    c->res->total.prompt_tokens += req->prompt_len;
    c->live++;
    uint32_t num_keys = 0;
    if (hash_prompt(c, r->prompt, req->prompt_len, &num_keys) != 0)
        return -1;
    kvrt_route_choice_t choice;
    kvrt_status_t st = kvrt_cluster_router_pick(c->router, &c->model, c->keys, num_keys,
                                                req->prompt_len, &choice);
    if (st != KVRT_OK)
        return fail_kvrt(c, c->ctx, "kvrt_cluster_router_pick", st);
    node_t *node = node_by_id(c, choice.node_id);
    r->node = (uint32_t)(choice.node_id - 1);
    node->res.requests++;
    node->queued_prefill += req->prompt_len;
    report_load(c, node);
    double ready = now_us;
    if (c->cc->sharing == SIM_SHARING_PULL && choice.best_blocks > choice.cached_blocks &&
        choice.best_node_id != choice.node_id) {
        uint32_t first = choice.cached_blocks, want = choice.best_blocks - first;
        node_t *peer = node_by_id(c, choice.best_node_id);
        double move_us = 0, recompute_us = 0;
        pull_cost(c, want, &move_us, &recompute_us);
        if (move_us < recompute_us) {
            uint32_t have = peer_holds(peer, c->keys, first, want);
            if (have < want) {
                /* The directory promised more than the peer has: drop
                 * those entries so the next request is not sent after them. */
                c->res->pull_misses++;
                kvrt_cluster_dir_forget(c->dir, peer->id, c->keys + first + have, want - have);
            }
            uint32_t placed = have ? place_blocks(c, node, first, have) : 0;
            if (placed) {
                ready = transfer(c, peer, node, placed, now_us);
                c->res->pulls++;
                c->res->pulled_blocks += placed;
                if (publish(c, node) != 0)
                    return -1;
            }
        }
    }
    return pending_push(c, node, ready, req->id);
}

static int add_to_sched(cluster_t *c, node_t *node, uint64_t id)
{
    crec_t *r = &c->recs[id];
    static const int32_t stop[] = {SIM_STOP_TOKEN};
    uint32_t len = r->req.prompt_len, max_new = r->req.max_new_tokens;
    if (r->phase == PHASE_PREFILL)
        max_new = 1;
    if (r->phase == PHASE_DECODE) {
        /* The prompt and the first token, whose KV came from the prefill node. */
        r->prompt[len] = r->req.answer[0];
        len++;
        max_new = r->req.max_new_tokens - 1;
    }
    kvrt_seq_params_t sp = {.field_mask = KVRT_SEQ_PARAM_STOP | KVRT_SEQ_PARAM_USER_TAG,
                            .prompt = r->prompt, .prompt_len = len, .max_new_tokens = max_new,
                            .stop_tokens = stop, .num_stop_tokens = 1, .user_tag = id};
    kvrt_seq_id_t seq;
    kvrt_status_t st = kvrt_seq_add(node->sched, &sp, &seq);
    if (r->phase != PHASE_PREFILL || st != KVRT_OK) { /* a prefill keeps it for the hand-off */
        free(r->prompt);
        r->prompt = NULL;
    }
    if (st == KVRT_ERR_NO_BLOCKS || st == KVRT_ERR_INVALID_ARG) {
        c->res->total.rejected++;
        r->live = 0;
        c->live--;
        if (r->phase != PHASE_DECODE)
            node->queued_prefill -= r->req.prompt_len;
        free(r->req.answer);
        r->req.answer = NULL;
        return sim_workload_done(c->workload, &r->req, node->now_us, 0, 0) ? fail(c, "oom") : 0;
    }
    if (st != KVRT_OK)
        return fail_kvrt(c, node->ctx, "kvrt_seq_add", st);
    node->live++;
    return 0;
}

/* ---- ends and hand-offs ---------------------------------------------------------------- */

/* The prefill phase ended with the first token: the prompt's full blocks
 * move to the least-loaded decode node, which admits the request once they
 * have landed (and recomputes only the partial last block). */
static int hand_off(cluster_t *c, node_t *from, crec_t *r, uint64_t id)
{
    kvrt_route_choice_t choice;
    kvrt_status_t st = kvrt_cluster_router_pick(c->decode_router, &c->decode_model, NULL, 0,
                                                0, &choice);
    if (st != KVRT_OK)
        return fail_kvrt(c, c->ctx, "kvrt_cluster_router_pick (decode)", st);
    node_t *to = node_by_id(c, choice.node_id);
    int32_t *grown = realloc(r->prompt, ((size_t)r->req.prompt_len + 1) * sizeof(int32_t));
    if (!grown)
        return fail(c, "out of memory");
    r->prompt = grown;
    uint32_t num_keys = 0;
    if (hash_prompt(c, r->prompt, r->req.prompt_len, &num_keys) != 0)
        return -1;
    double ready = from->now_us;
    uint32_t placed = num_keys ? place_blocks(c, to, 0, num_keys) : 0;
    if (placed) {
        ready = transfer(c, from, to, placed, from->now_us);
        c->res->handoffs++;
        c->res->handoff_blocks += placed;
        if (publish(c, to) != 0)
            return -1;
    }
    r->phase = PHASE_DECODE;
    r->node = (uint32_t)(to - c->nodes);
    to->res.requests++;
    return pending_push(c, to, ready, id);
}

static int record_latency(cluster_t *c, const crec_t *r)
{
    double arrival = r->req.arrival_us;
    int rc = sim_samples_add(&c->ttft, (r->first_token_us - arrival) / 1e3);
    rc |= sim_samples_add(&c->e2e, (r->last_token_us - arrival) / 1e3);
    if (r->emitted >= 2)
        rc |= sim_samples_add(&c->tpot, (r->last_token_us - r->first_token_us) / 1e3 /
                                            (double)(r->emitted - 1));
    return rc ? fail(c, "out of memory") : 0;
}

static int finish(cluster_t *c, node_t *node, crec_t *r, int completed)
{
    r->live = 0;
    c->live--;
    c->res->total.output_tokens += r->emitted;
    int rc = sim_workload_done(c->workload, &r->req, node->now_us, r->emitted, completed);
    free(r->req.answer);
    r->req.answer = NULL;
    free(r->prompt);
    r->prompt = NULL;
    return rc != 0 ? fail(c, "workload: out of memory") : 0;
}

static int end_event(cluster_t *c, node_t *node, const kvrt_seq_info_t *ev)
{
    if (ev->user_tag >= c->num_recs || !c->recs[ev->user_tag].live)
        return fail(c, "end event for unknown or ended request %llu",
                    (unsigned long long)ev->user_tag);
    crec_t *r = &c->recs[ev->user_tag];
    node->live--;
    if (r->running && r->emitted > 0 && r->phase != PHASE_PREFILL)
        node->decoding--;
    r->running = 0;
    if (r->phase != PHASE_DECODE) {
        node->res.prefix_hit_tokens += ev->cached_tokens;
        node->res.prefix_query_tokens += r->offered;
        c->res->total.prefix_hit_tokens += ev->cached_tokens;
        c->res->total.prefix_query_tokens += r->offered;
    }
    switch (ev->end_reason) {
    case KVRT_END_STOP:
    case KVRT_END_LENGTH:
        if (r->emitted == 0)
            return fail(c, "request %llu finished without output",
                        (unsigned long long)ev->user_tag);
        if (r->phase == PHASE_PREFILL && ev->end_reason == KVRT_END_LENGTH &&
            r->req.answer_len > 1 && r->req.max_new_tokens > 1)
            return hand_off(c, node, r, ev->user_tag);
        if (ev->end_reason == KVRT_END_STOP)
            c->res->total.finished_stop++;
        else
            c->res->total.finished_length++;
        if (record_latency(c, r) != 0)
            return -1;
        return finish(c, node, r, 1);
    case KVRT_END_ABORTED:
        c->res->total.aborted++;
        return finish(c, node, r, 0);
    default:
        c->res->total.failed++;
        return finish(c, node, r, 0);
    }
}

static int drain_ended(cluster_t *c, node_t *node)
{
    for (;;) {
        uint32_t n = 0;
        kvrt_status_t st = kvrt_sched_drain_ended(node->sched, c->ended, EVENT_BATCH, &n);
        if (st != KVRT_OK)
            return fail_kvrt(c, node->ctx, "kvrt_sched_drain_ended", st);
        for (uint32_t i = 0; i < n; i++)
            if (end_event(c, node, &c->ended[i]) != 0)
                return -1;
        if (n < EVENT_BATCH)
            return 0;
    }
}

/* ---- one step of one node ------------------------------------------------------------ */

static int step_node(cluster_t *c, node_t *node)
{
    while (node->num_pending > 0 && node->pending[0].ready_us <= node->now_us) {
        uint64_t id = node->pending[0].rec;
        memmove(node->pending, node->pending + 1, (node->num_pending - 1) * sizeof(pending_t));
        node->num_pending--;
        if (add_to_sched(c, node, id) != 0)
            return -1;
    }
    const kvrt_batch_plan_t *plan = NULL;
    kvrt_status_t st = kvrt_sched_step(node->sched, to_ns(node->now_us), &plan);
    if (st != KVRT_OK)
        return fail_kvrt(c, node->ctx, "kvrt_sched_step", st);
    if (plan->num_seqs == 0) {
        if (drain_ended(c, node) != 0)
            return -1;
        node->now_us = node->num_pending ? fmax(node->now_us, node->pending[0].ready_us)
                                         : INFINITY;
        return 0;
    }
    for (uint32_t i = 0; i < plan->num_preempted; i++) {
        kvrt_seq_info_t info;
        if (kvrt_seq_info(node->sched, plan->preempted[i], &info) == KVRT_OK &&
            info.user_tag < c->num_recs) {
            crec_t *r = &c->recs[info.user_tag];
            if (r->running && r->emitted > 0 && r->phase != PHASE_PREFILL)
                node->decoding--;
            r->running = 0;
        }
    }
    sim_step_shape_t shape = {0};
    uint32_t n = 0;
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        const kvrt_plan_seq_t *s = &plan->seqs[i];
        if (s->user_tag >= c->num_recs || !c->recs[s->user_tag].live)
            return fail(c, "plan names unknown request %llu", (unsigned long long)s->user_tag);
        crec_t *r = &c->recs[s->user_tag];
        if (!r->running) {
            r->running = 1;
            if (r->phase != PHASE_DECODE)
                r->offered += (uint64_t)r->req.prompt_len + r->emitted - 1;
            else if (r->emitted > 0)
                node->decoding++;
        }
        if (s->kind == KVRT_PLAN_PREFILL)
            sim_step_add_prefill(&shape, s->num_new_tokens, s->num_computed_tokens);
        else
            sim_step_add_decode(&shape, s->num_new_tokens, s->num_computed_tokens);
        if (!s->sample)
            continue;
        if (r->emitted >= r->req.answer_len)
            return fail(c, "request %llu asked for token %u of a %u-token answer",
                        (unsigned long long)s->user_tag, r->emitted + 1, r->req.answer_len);
        c->tokens[n++] = r->req.answer[r->emitted];
    }
    double dt = sim_step_time_us(&c->cfg->cost, &shape);
    node->now_us += dt;
    node->res.busy_s += dt / 1e6;
    node->res.steps++;
    c->res->total.steps++;
    c->res->total.busy_s += dt / 1e6;
    kvrt_commit_t commit = {.step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = n,
                            .tokens = c->tokens};
    if ((st = kvrt_sched_commit(node->sched, &commit)) != KVRT_OK)
        return fail_kvrt(c, node->ctx, "kvrt_sched_commit", st);
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        const kvrt_plan_seq_t *s = &plan->seqs[i];
        if (!s->sample)
            continue;
        crec_t *r = &c->recs[s->user_tag];
        if (r->phase != PHASE_DECODE && r->emitted == 0) {
            r->first_token_us = node->now_us;
            node->queued_prefill -= r->req.prompt_len;
            if (r->phase == PHASE_WHOLE)
                node->decoding++;
        }
        r->emitted++;
        r->last_token_us = node->now_us;
    }
    if (drain_ended(c, node) != 0)
        return -1;
    return publish(c, node);
}

/* ---- the loop ------------------------------------------------------------------------- */

static node_t *earliest_node(cluster_t *c)
{
    node_t *best = NULL;
    for (uint32_t n = 0; n < c->num_nodes; n++) {
        node_t *node = &c->nodes[n];
        if ((node->live == 0 && node->num_pending == 0) || node->now_us == INFINITY)
            continue;
        if (!best || node->now_us < best->now_us)
            best = node;
    }
    return best;
}

static int loop(cluster_t *c, sim_progress_fn progress, void *user)
{
    uint64_t next_progress = PROGRESS_EVERY;
    for (;;) {
        if (c->live == 0 && sim_workload_exhausted(c->workload))
            return 0;
        double t_arr = sim_workload_next_arrival(c->workload);
        node_t *node = earliest_node(c);
        if (t_arr < INFINITY && (!node || t_arr <= node->now_us)) {
            sim_request_t req;
            int got = sim_workload_pop(c->workload, &req, c->error, c->error_size);
            if (got < 0)
                return -1;
            if (got > 0 && arrive(c, &req, t_arr) != 0)
                return -1;
            continue;
        }
        if (!node)
            return fail(c, "%llu requests can never run (no node can step and nothing "
                           "else will arrive)", (unsigned long long)c->live);
        if (step_node(c, node) != 0)
            return -1;
        if (progress && c->res->total.steps >= next_progress) {
            next_progress += PROGRESS_EVERY;
            sim_progress_t p = {.ended = c->res->total.submitted - c->live,
                                .planned = sim_workload_planned(c->workload),
                                .sim_s = node->now_us / 1e6, .steps = c->res->total.steps};
            progress(user, &p);
        }
    }
}

static int collect(cluster_t *c)
{
    sim_results_t *t = &c->res->total;
    double end_us = 0;
    for (uint32_t n = 0; n < c->num_nodes; n++) {
        node_t *node = &c->nodes[n];
        kvrt_sched_stats_t s;
        kvrt_sched_stats(node->sched, &s);
        node->res.prefill_tokens = s.prefill_tokens;
        t->prefill_tokens += s.prefill_tokens;
        t->preemptions += s.preemptions;
        kvrt_cache_stats_t cs;
        kvrt_cache_stats(node->cache, &cs);
        node->res.evictions = cs.evictions;
        t->cache_evictions += cs.evictions;
        kvrt_status_t st = kvrt_pool_verify(node->pool);
        if (st != KVRT_OK)
            return fail_kvrt(c, node->ctx, "kvrt_pool_verify", st);
        kvrt_pool_info_t info;
        kvrt_pool_info(node->pool, &info);
        if (info.used_blocks != 0)
            return fail(c, "node %u: %u KV blocks still in use after every request ended", n,
                        info.used_blocks);
        t->kv_blocks = info.num_blocks;
        t->block_tokens = info.tokens_per_block;
        if (node->now_us < INFINITY && node->now_us > end_us)
            end_us = node->now_us;
        c->res->node[n] = node->res;
    }
    uint64_t ended = t->finished_stop + t->finished_length + t->aborted + t->failed +
                     t->rejected;
    if (ended != t->submitted)
        return fail(c, "%llu requests submitted, %llu ended", (unsigned long long)t->submitted,
                    (unsigned long long)ended);
    t->sim_s = end_us / 1e6;
    if (t->steps)
        t->mean_step_ms = t->busy_s * 1e3 / (double)t->steps;
    sim_latency_summarize(&c->ttft, &t->ttft_ms);
    sim_latency_summarize(&c->tpot, &t->tpot_ms);
    sim_latency_summarize(&c->e2e, &t->e2e_ms);
    kvrt_cluster_dir_stats_t ds;
    kvrt_cluster_dir_stats(c->dir, &ds);
    c->res->dir_bytes_per_block = ds.entries ? (double)ds.table_bytes / (double)ds.entries : 0;
    return 0;
}

static void close_cluster(cluster_t *c)
{
    for (uint32_t n = 0; c->nodes && n < c->num_nodes; n++) {
        kvrt_ctx_destroy(c->nodes[n].ctx);
        free(c->nodes[n].pending);
    }
    kvrt_cluster_router_destroy(c->router);
    kvrt_cluster_router_destroy(c->decode_router);
    kvrt_ctx_destroy(c->ctx);
    for (uint64_t i = 0; c->recs && i < c->num_recs; i++) {
        free(c->recs[i].req.answer);
        free(c->recs[i].prompt);
    }
    free(c->recs);
    free(c->nodes);
    free(c->tokens);
    free(c->keys);
    free(c->blocks);
    free(c->drain);
    sim_samples_free(&c->ttft);
    sim_samples_free(&c->tpot);
    sim_samples_free(&c->e2e);
}

int sim_cluster_run(const sim_config_t *config, const sim_cluster_config_t *cc,
                    sim_workload_t *workload, sim_progress_fn progress, void *progress_user,
                    sim_cluster_results_t *results, char *error, size_t error_size)
{
    if (sim_config_validate(config, error, error_size) != 0 ||
        sim_cluster_config_validate(cc, error, error_size) != 0)
        return -1;
    if (!config->prefix_cache) {
        snprintf(error, error_size, "several nodes need the prefix cache (--cache off refused)");
        return -1;
    }
    struct timespec w0, w1;
    clock_gettime(CLOCK_MONOTONIC, &w0);
    sim_cluster_results_t res = {.nodes = cc->nodes};
    cluster_t c = {.cfg = config, .cc = cc, .workload = workload, .num_nodes = cc->nodes,
                   .res = &res, .error = error, .error_size = error_size};
    c.block_bytes = (uint64_t)config->num_layers * config->num_kv_heads * config->head_dim *
                    2u * 2u * config->block_tokens;
    c.pull_cost = (kvrt_cluster_pull_cost_t){
        .field_mask = KVRT_PULL_COST_NET_GBPS | KVRT_PULL_COST_LATENCY | KVRT_PULL_COST_PREFILL,
        .block_bytes = c.block_bytes,
        .tokens_per_block = config->block_tokens,
        .net_gbps = cc->net_gbps,
        .latency_us = cc->net_latency_us,
        .prefill_us_per_token = config->cost.prefill_us_per_token};
    c.num_recs = sim_workload_planned(workload);
    c.recs = calloc(c.num_recs ? c.num_recs : 1, sizeof(*c.recs));
    c.nodes = calloc(cc->nodes, sizeof(*c.nodes));
    c.tokens = malloc(((size_t)config->max_seqs + 1) * sizeof(*c.tokens));
    c.drain = malloc(DRAIN_BATCH * sizeof(*c.drain));
    res.node = calloc(cc->nodes, sizeof(*res.node));
    int rc;
    if (!c.recs || !c.nodes || !c.tokens || !c.drain || !res.node)
        rc = fail(&c, "out of memory");
    else
        rc = open_cluster(&c);
    if (rc == 0)
        rc = loop(&c, progress, progress_user);
    if (rc == 0)
        rc = collect(&c);
    close_cluster(&c);
    clock_gettime(CLOCK_MONOTONIC, &w1);
    res.total.wall_s = (double)(w1.tv_sec - w0.tv_sec) + (double)(w1.tv_nsec - w0.tv_nsec) / 1e9;
    if (rc != 0) {
        free(res.node);
        return -1;
    }
    *results = res;
    return 0;
}

void sim_cluster_results_free(sim_cluster_results_t *results)
{
    free(results->node);
    results->node = NULL;
}
