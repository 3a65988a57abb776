/*
 * soak_cluster.c - kvrt-soak's etcd, directory and router (soak_cluster.h).
 */
#include "soak_cluster.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define MAX_PROMPT_BLOCKS (SOAK_MAX_PROMPT / SOAK_BLOCK_TOKENS)

static int etcd_spawn(soak_cluster_t *c)
{
    char data[96], log[96], cluster[128];
    snprintf(data, sizeof(data), "%s/data", c->etcd_dir);
    snprintf(log, sizeof(log), "%s/log", c->etcd_dir);
    snprintf(cluster, sizeof(cluster), "default=%s", c->peer_url);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log, O_WRONLY | O_CREAT | O_APPEND,
                                     0600);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    char *const argv[] = {"etcd", "--name", "default", "--data-dir", data,
                          "--listen-client-urls", c->endpoint, "--advertise-client-urls",
                          c->endpoint, "--listen-peer-urls", c->peer_url,
                          "--initial-advertise-peer-urls", c->peer_url, "--initial-cluster",
                          cluster, NULL};
    int rc = posix_spawn(&c->etcd_pid, "/usr/bin/etcd", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    return rc == 0 ? 0 : -1;
}

const char *soak_cluster_start(soak_cluster_t *c, const char *host, unsigned port_base,
                               uint32_t lease_ttl_s)
{
    *c = (soak_cluster_t){.lease_ttl_s = lease_ttl_s, .serving_since = -1.0};
    if (access("/usr/bin/etcd", X_OK) != 0)
        return "no /usr/bin/etcd (Debian's etcd-server)";
    snprintf(c->etcd_dir, sizeof(c->etcd_dir), "/tmp/kvrt-soak-etcd-XXXXXX");
    if (!mkdtemp(c->etcd_dir))
        return "cannot make etcd's data directory";
    snprintf(c->endpoint, sizeof(c->endpoint), "http://%s:%u", host, port_base);
    snprintf(c->peer_url, sizeof(c->peer_url), "http://%s:%u", host, port_base + 1);
    if (etcd_spawn(c) != 0) {
        soak_cluster_stop(c);
        return "cannot start etcd";
    }
    kvrt_kv_layout_t layout = {.num_layers = SOAK_LAYERS, .num_kv_heads = SOAK_KV_HEADS,
                               .head_dim = SOAK_HEAD_DIM, .tokens_per_block = SOAK_BLOCK_TOKENS};
    kvrt_cluster_router_params_t rp = {.field_mask = KVRT_ROUTER_PARAM_TOKENS_PER_BLOCK,
                                       .tokens_per_block = SOAK_BLOCK_TOKENS};
    /* The supervisor is a member too (it must hold a lease to watch), of a
     * model of its own, so the router never picks it. */
    kvrt_cluster_etcd_params_t ep = {
        .field_mask = KVRT_ETCD_PARAM_ENDPOINT | KVRT_ETCD_PARAM_LEASE_TTL |
                      KVRT_ETCD_PARAM_POLL_MS | KVRT_ETCD_PARAM_TIMEOUT_MS |
                      KVRT_ETCD_PARAM_MAX_BACKOFF_MS,
        .node_id = 0x50a4ull << 32, .epoch = 1, .endpoint = c->endpoint,
        .lease_ttl_s = lease_ttl_s, .poll_ms = 200, .timeout_ms = 500, .max_backoff_ms = 1000};
    kvrt_ctx_params_t cp = {.field_mask = KVRT_CTX_PARAM_LOG_LEVEL, .log_level = KVRT_LOG_ERROR};
    if (kvrt_ctx_create(&cp, &c->ctx) != KVRT_OK ||
        kvrt_model_fingerprint("kvrt-soak/model", &layout, &c->model) != KVRT_OK ||
        kvrt_model_fingerprint("kvrt-soak/supervisor", &layout, &ep.model) != KVRT_OK ||
        kvrt_block_hash_root(&c->model, &c->root) != KVRT_OK ||
        kvrt_cluster_dir_create(c->ctx, NULL, &c->dir) != KVRT_OK ||
        kvrt_cluster_router_create(c->dir, &rp, &c->router) != KVRT_OK) {
        soak_cluster_stop(c);
        return "kvrt refused the directory or router";
    }
    /* etcd takes a moment to listen. */
    kvrt_status_t st = KVRT_ERR_COORDINATOR;
    for (int i = 0; i < 100 && st == KVRT_ERR_COORDINATOR; i++) {
        st = kvrt_cluster_etcd_create(c->ctx, &ep, &c->member);
        if (st == KVRT_ERR_COORDINATOR)
            usleep(100 * 1000);
    }
    if (st != KVRT_OK) {
        soak_cluster_stop(c);
        return "etcd did not answer within 10 s";
    }
    return NULL;
}

int soak_cluster_etcd_kill(soak_cluster_t *c)
{
    if (c->etcd_pid <= 0)
        return -1;
    kill(c->etcd_pid, SIGKILL);
    waitpid(c->etcd_pid, NULL, 0);
    c->etcd_pid = 0;
    return 0;
}

int soak_cluster_etcd_restart(soak_cluster_t *c)
{
    return c->etcd_pid > 0 ? 0 : etcd_spawn(c);
}

void soak_cluster_tick(soak_cluster_t *c, double now)
{
    if (!c->member || now < c->next_sync)
        return;
    c->next_sync = now + 0.2;
    kvrt_cluster_etcd_sync(c->member, c->dir, NULL, NULL);
    kvrt_cluster_etcd_stats_t st;
    int ok = kvrt_cluster_etcd_stats(c->member, &st) == KVRT_OK && st.connected &&
             st.last_ok_age_ms < 1000;
    if (!ok)
        c->serving_since = -1.0;
    else if (c->serving_since < 0)
        c->serving_since = now;
}

double soak_cluster_serving_since(const soak_cluster_t *c)
{
    return c->serving_since;
}

int soak_cluster_events(soak_cluster_t *c, uint32_t node, const soak_msg_events_t *m)
{
    uint64_t id = node + 1u;
    if (!c->dir || node >= SOAK_MAX_NODES)
        return 0;
    if (m->snapshot) {
        if (!c->awaiting[node])
            return 0;
        if (m->offset == 0) {
            free(c->snap[node]);
            c->snap[node] = malloc(((size_t)m->total + 1) * sizeof(kvrt_kv_event_t));
            c->snap_got[node] = 0;
        }
        if (!c->snap[node] || m->offset != c->snap_got[node] || m->offset + m->count > m->total)
            return 0;
        memcpy(c->snap[node] + m->offset, m->events, m->count * sizeof(kvrt_kv_event_t));
        c->snap_got[node] += m->count;
        if (c->snap_got[node] < m->total)
            return 0;
        kvrt_status_t st = kvrt_cluster_dir_load_snapshot(c->dir, id, m->epoch,
                                                          m->last_event_id, c->snap[node],
                                                          m->total);
        free(c->snap[node]);
        c->snap[node] = NULL;
        c->awaiting[node] = st != KVRT_OK;
        return 0;
    }
    if (c->awaiting[node])
        return 0; /* the snapshot, further down the same channel, covers these */
    kvrt_status_t st = kvrt_cluster_dir_apply(c->dir, id, m->epoch, m->events, m->count);
    if (st == KVRT_OK) {
        c->events_applied += m->count;
        return 0;
    }
    if (st == KVRT_ERR_RESYNC || st == KVRT_ERR_UNKNOWN_NODE) {
        /* A gap, or a node etcd has not shown us yet: its entries come
         * back from a snapshot once it is a member. */
        c->resyncs++;
        c->awaiting[node] = 1;
        return 1;
    }
    return 0; /* STALE_EPOCH: late events of a dead incarnation, refused */
}

void soak_cluster_load(soak_cluster_t *c, uint32_t node, const soak_msg_stats_t *m)
{
    if (!c->dir)
        return;
    kvrt_cluster_load_t load = {.field_mask = KVRT_CLUSTER_LOAD_RUNNING_DECODES |
                                              KVRT_CLUSTER_LOAD_FREE_BLOCKS |
                                              KVRT_CLUSTER_LOAD_QUEUED_PREFILL,
                                .running_decodes = m->running, .free_blocks = m->free_blocks,
                                .queued_prefill_tokens = m->waiting * 512u};
    kvrt_cluster_dir_set_load(c->dir, node + 1u, &load);
}

int soak_cluster_route(soak_cluster_t *c, const int32_t *prompt, uint32_t prompt_len,
                       uint32_t *target_out, uint32_t *source_out)
{
    if (!c->router)
        return -1;
    static kvrt_block_hash_t keys[MAX_PROMPT_BLOCKS];
    uint32_t n = prompt_len / SOAK_BLOCK_TOKENS;
    if (n > MAX_PROMPT_BLOCKS)
        n = MAX_PROMPT_BLOCKS;
    kvrt_block_hash_t parent = c->root;
    for (uint32_t b = 0; b < n; b++) {
        kvrt_block_hash(&parent, prompt + (uint64_t)b * SOAK_BLOCK_TOKENS, SOAK_BLOCK_TOKENS,
                        b * SOAK_BLOCK_TOKENS, NULL, &keys[b]);
        parent = keys[b];
    }
    kvrt_route_choice_t choice;
    if (kvrt_cluster_router_pick(c->router, &c->model, keys, n, prompt_len, &choice) != KVRT_OK ||
        choice.node_id == 0 || choice.node_id > SOAK_MAX_NODES)
        return -1;
    c->routed++;
    *target_out = (uint32_t)(choice.node_id - 1);
    *source_out = choice.best_blocks > 0 && choice.best_node_id >= 1 &&
                          choice.best_node_id <= SOAK_MAX_NODES
                      ? (uint32_t)(choice.best_node_id - 1)
                      : *target_out;
    return 0;
}

int soak_cluster_holds(const soak_cluster_t *c, uint32_t node, uint64_t epoch)
{
    kvrt_cluster_node_info_t info;
    if (!c->dir || kvrt_cluster_dir_node_info(c->dir, node + 1u, &info) != KVRT_OK)
        return 0;
    uint64_t blocks = info.blocks[0] + info.blocks[1] + info.blocks[2];
    return info.epoch == epoch && blocks > 0;
}

void soak_cluster_stop(soak_cluster_t *c)
{
    if (c->member)
        kvrt_cluster_etcd_destroy(c->member);
    c->member = NULL;
    /* The router is not the context's: it goes first, then what it reads. */
    kvrt_cluster_router_destroy(c->router);
    kvrt_cluster_dir_destroy(c->dir);
    if (c->ctx)
        kvrt_ctx_destroy(c->ctx);
    c->ctx = NULL;
    c->dir = NULL;
    c->router = NULL;
    for (int i = 0; i < SOAK_MAX_NODES; i++) {
        free(c->snap[i]);
        c->snap[i] = NULL;
    }
    soak_cluster_etcd_kill(c);
    if (c->etcd_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", c->etcd_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "kvrt-soak: could not remove %s\n", c->etcd_dir);
        c->etcd_dir[0] = '\0';
    }
}
