/*
 * soak_node.c - one kvrt-soak node (soak_node.h).
 *
 * Single-threaded loop: read the supervisor's messages, commit the step in
 * flight once its simulated GPU time has passed (writing the blocks it
 * computed), move pulls forward, admit new requests (hand-off, onload or
 * pull), end hand-offs and onloads, plan the next step; end prefill sends
 * that completed. Pulls, hand-offs and admissions happen only between a
 * commit and the next step, never under an uncommitted plan.
 */
#include "soak_node.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "soak_node_internal.h"

/* The agents of a soak share this key (a test deployment's secret). */
static const uint8_t soak_cluster_key[32] = "kvrt-soak cluster key, 32 bytes";

double soak_node_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int soak_node_die(node_t *n, const char *what, kvrt_status_t st)
{
    fprintf(stderr, "kvrt-soak node %u: %s: %s (%s)\n", n->cfg->index, what,
            kvrt_status_str(st), n->ctx ? kvrt_ctx_last_error(n->ctx) : "");
    return 1;
}

void soak_node_send(node_t *n, const void *msg, size_t len)
{
    /* The supervisor always reads; a failed send means it is gone. */
    if (send(n->cfg->control_fd, msg, len, MSG_NOSIGNAL) != (ssize_t)len)
        _exit(3);
}

/* ---- blocks ------------------------------------------------------------------- */

static uint8_t *page_of(node_t *n, int32_t block, uint32_t page)
{
    void *a = NULL;
    kvrt_pool_page_address(n->pool, block, page / 2, (kvrt_kv_half_t)(page % 2), &a);
    return a;
}

soak_verdict_t soak_node_block_check(node_t *n, int32_t block, const kvrt_block_hash_t *h)
{
    for (uint32_t p = 0; p < SOAK_LAYERS * 2; p++) {
        soak_verdict_t v = soak_payload_check(h, p, page_of(n, block, p), n->page_bytes);
        if (v != SOAK_BLOCK_OK)
            return v;
    }
    return SOAK_BLOCK_OK;
}

void soak_node_block_fill(node_t *n, int32_t block, const kvrt_block_hash_t *h)
{
    for (uint32_t p = 0; p < SOAK_LAYERS * 2; p++)
        soak_payload_fill(h, p, page_of(n, block, p), n->page_bytes);
}

/* A block going back to the pool without being cached loses its header, so
 * stale bytes can never pass for a later block of the same content. */
void soak_node_block_scrub(node_t *n, int32_t block)
{
    memset(page_of(n, block, 0), 0, sizeof(kvrt_block_hash_t));
}

static void dir_publish(node_t *n, const kvrt_block_hash_t *h, int32_t block)
{
    soak_dir_entry_t *e = &n->dir[h->lo % SOAK_DIR_SLOTS];
    e->check = 0;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    e->lo = h->lo;
    e->hi = h->hi;
    e->block = block;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    e->check = soak_dir_check(h->lo, h->hi, block);
}

/*
 * The blocks a step computed: full blocks of the request's tokens (prompt,
 * then answer) that became complete in [computed, computed + new) get
 * their content now, before the commit may cache them, so every cached
 * block holds its content (a later turn's prompt hits the answer's blocks).
 */
static void fill_computed_blocks(node_t *n, request_t *r, const kvrt_plan_seq_t *ps)
{
    const int32_t *blocks = NULL;
    uint32_t nb = 0;
    if (kvrt_seq_blocks(n->sched, r->seq, &blocks, &nb, NULL) != KVRT_OK)
        return;
    uint64_t lo = ps->num_computed_tokens, hi = lo + ps->num_new_tokens;
    for (uint32_t b = (uint32_t)(lo / SOAK_BLOCK_TOKENS); b < r->total_blocks && b < nb; b++) {
        if ((uint64_t)(b + 1) * SOAK_BLOCK_TOKENS > hi)
            break;
        soak_node_block_fill(n, blocks[b], &r->hashes[b]);
    }
}

/*
 * The moment attention would read a request's prompt KV (its first token):
 * every full prompt block, computed here, found in the cache, pulled,
 * onloaded or handed over, must hold its content (corrupt_used counts
 * those that do not: a wrong block is as bad as a damaged one). Then they
 * are published for peers.
 */
static void use_prompt_blocks(node_t *n, request_t *r)
{
    const int32_t *blocks = NULL;
    uint32_t nb = 0, ntok = 0;
    if (kvrt_seq_blocks(n->sched, r->seq, &blocks, &nb, &ntok) != KVRT_OK)
        return;
    uint32_t full = r->full_blocks < nb ? r->full_blocks : nb;
    for (uint32_t b = 0; b < full; b++) {
        soak_verdict_t v = soak_node_block_check(n, blocks[b], &r->hashes[b]);
        n->c.blocks_checked++;
        if (v != SOAK_BLOCK_OK) {
            n->c.corrupt_used++;
            fprintf(stderr, "kvrt-soak node %u: request %llu (%s) used %s block %u (pool %d); "
                            "prompt %u, first prefill at %u computed; pulled, handed over, "
                            "onloaded up to block %u, %u, %u\n",
                    n->cfg->index, (unsigned long long)r->id,
                    r->role == ROLE_PREFILL ? "prefill" : "client",
                    v == SOAK_BLOCK_STALE ? "a wrong" : "a corrupt", b, blocks[b], r->prompt_len,
                    r->first_computed, r->pulled_end, r->handed_end, r->onloaded_end);
        }
        dir_publish(n, &r->hashes[b], blocks[b]);
    }
}

/* ---- request slots -------------------------------------------------------------- */

request_t *soak_node_request_slot(node_t *n)
{
    for (uint32_t i = 0; i < MAX_LIVE; i++)
        if (!n->live[i].used)
            return &n->live[i];
    return NULL;
}

/* Copies the prompt and the answer (the tokens the model will emit) and
 * hashes their full blocks. Returns 0 or -1 (no memory). */
int soak_node_request_init(node_t *n, request_t *r, const int32_t *tokens, uint32_t prompt_len,
                      uint32_t answer_len)
{
    r->prompt_len = prompt_len;
    r->answer_len = answer_len;
    r->full_blocks = prompt_len / SOAK_BLOCK_TOKENS;
    r->total_blocks = (prompt_len + answer_len) / SOAK_BLOCK_TOKENS;
    r->tokens = malloc(((size_t)prompt_len + answer_len) * 4u);
    r->hashes = malloc(((size_t)r->total_blocks + 1) * sizeof(kvrt_block_hash_t));
    if (!r->tokens || !r->hashes)
        return -1;
    memcpy(r->tokens, tokens, ((size_t)prompt_len + answer_len) * 4u);
    kvrt_block_hash_t parent = n->root;
    for (uint32_t b = 0; b < r->total_blocks; b++) {
        kvrt_block_hash(&parent, r->tokens + (uint64_t)b * SOAK_BLOCK_TOKENS, SOAK_BLOCK_TOKENS,
                        b * SOAK_BLOCK_TOKENS, NULL, &r->hashes[b]);
        parent = r->hashes[b];
    }
    r->prefill = SOAK_NO_NODE;
    r->first_computed = UINT32_MAX;
    return 0;
}

void soak_node_request_free(request_t *r)
{
    free(r->tokens);
    free(r->hashes);
    free(r->ticket);
    *r = (request_t){0};
}

/* ---- peers ---------------------------------------------------------------------- */

static void peer_drop(node_t *n, peer_t *p)
{
    if (p->pool_remote)
        kvrt_xfer_remote_release(p->pool_remote);
    if (p->dir_remote)
        kvrt_xfer_remote_release(p->dir_remote);
    if (p->peer)
        kvrt_xfer_disconnect(p->peer);
    p->pool_remote = p->dir_remote = NULL;
    p->peer = NULL;
    p->connected = 0;
    p->dropping = 0;
    p->retry_at = soak_node_now_s() + 0.5;
    (void)n;
}

static peer_t *peer_ready(node_t *n, uint32_t index)
{
    if (index >= SOAK_MAX_NODES || index == n->cfg->index)
        return NULL;
    peer_t *p = &n->peers[index];
    if (!p->known || p->dropping || p->stale)
        return NULL;
    if (p->connected) {
        kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
        if (kvrt_xfer_peer_info(p->peer, &info) == KVRT_OK &&
            (info.state == KVRT_XFER_PEER_CONNECTED ||
             info.state == KVRT_XFER_PEER_RECONNECTING))
            return info.state == KVRT_XFER_PEER_CONNECTED ? p : NULL;
        if (p->users == 0)
            peer_drop(n, p);
        else
            p->dropping = 1;
        return NULL;
    }
    if (soak_node_now_s() < p->retry_at)
        return NULL;
    p->retry_at = soak_node_now_s() + 1.0;
    if (kvrt_xfer_connect(n->agent, p->id.address, 500, &p->peer) != KVRT_OK) {
        p->peer = NULL;
        return NULL;
    }
    if (kvrt_xfer_import(p->peer, p->id.pool_desc, p->id.pool_desc_len, &p->pool_remote) !=
            KVRT_OK ||
        kvrt_xfer_import(p->peer, p->id.dir_desc, p->id.dir_desc_len, &p->dir_remote) !=
            KVRT_OK) {
        peer_drop(n, p);
        return NULL;
    }
    p->connected = 1;
    return p;
}

static void peer_learn(node_t *n, const soak_msg_peer_t *m)
{
    if (m->index >= SOAK_MAX_NODES || m->index == n->cfg->index)
        return;
    peer_t *p = &n->peers[m->index];
    if (p->known && p->generation == m->generation)
        return;
    /* A restarted peer: its regions are new. */
    if (p->connected) {
        if (p->users == 0)
            peer_drop(n, p);
        else
            p->dropping = 1;
    }
    p->id = *m;
    p->generation = m->generation;
    p->known = 1;
    p->stale = 0;
    p->retry_at = 0;
}

/* ---- requests and pulls ------------------------------------------------------- */

static void request_end(node_t *n, request_t *r, uint32_t reason, kvrt_status_t status,
                        uint32_t cached, uint32_t output)
{
    soak_msg_end_t m = {.type = SOAK_MSG_END, .reason = reason, .id = r->id,
                        .status = status, .prompt_len = r->prompt_len,
                        .cached_tokens = cached, .output_tokens = output,
                        .ttft_ms = r->first_s > 0 ? (r->first_s - r->arrival_s) * 1e3 : -1.0};
    soak_node_send(n, &m, sizeof(m));
    soak_node_request_free(r);
}

/*
 * Ends a pull: the first `landed` blocks hold verified K/V and count as
 * computed (kvrt_arrival_complete); the others lose their header first, so
 * stale bytes never pass for a later block of the same content.
 */
static void pull_release(node_t *n, pull_t *pl, uint32_t landed)
{
    for (uint32_t k = landed; k < pl->count; k++)
        soak_node_block_scrub(n, pl->local_blocks[k]);
    kvrt_status_t st = kvrt_arrival_complete(n->sched, pl->arrival, landed);
    if (st != KVRT_OK)
        soak_node_die(n, "kvrt_arrival_complete", st);
    if (pl->xreq)
        kvrt_xfer_request_release(pl->xreq);
    pl->xreq = NULL;
    peer_t *p = &n->peers[pl->peer];
    if (--p->users == 0 && p->dropping)
        peer_drop(n, p);
    pl->stage = PULL_FREE;
    pl->count = 0;
}

/*
 * A queued request whose prefix another node holds: kvrt's "waiting for
 * KV" (kvrt_seq_await_kv) keeps what the local cache has and gives blocks
 * for the rest of the first MAX_PULL_BLOCKS blocks; the node reads the
 * holder's directory entries for them. The scheduler runs other requests
 * meanwhile and gives the arrival up at its deadline.
 */
static void pull_start(node_t *n, uint32_t slot)
{
    request_t *r = &n->live[slot];
    uint32_t want = r->prompt_len > 1 ? (r->prompt_len - 1) / SOAK_BLOCK_TOKENS : 0;
    if (want > MAX_PULL_BLOCKS)
        want = MAX_PULL_BLOCKS;
    pull_t *pl = NULL;
    for (uint32_t i = 0; i < MAX_PULLS && !pl; i++)
        if (n->pulls[i].stage == PULL_FREE)
            pl = &n->pulls[i];
    peer_t *p = want ? peer_ready(n, r->home) : NULL;
    if (!pl || !p)
        return;
    kvrt_arrival_params_t ap = {
        .field_mask = KVRT_ARRIVAL_PARAM_DEADLINE, .num_tokens = want * SOAK_BLOCK_TOKENS,
        .deadline_ns =
            (uint64_t)((soak_node_now_s() + 2.0 * n->cfg->transfer_timeout_ms / 1e3) * 1e9)};
    uint32_t first = 0, count = 0;
    const int32_t *blocks = NULL;
    if (kvrt_seq_await_kv(n->sched, r->seq, &ap, &pl->arrival, &first, &count) != KVRT_OK)
        return; /* no blocks to spare: it is computed instead */
    n->c.pulls++;
    pl->stage = PULL_DIR;
    pl->live = slot;
    pl->peer = r->home;
    pl->first = first;
    pl->count = 0;
    pl->xreq = NULL;
    p->users++;
    if (count == 0 || kvrt_seq_blocks(n->sched, r->seq, &blocks, NULL, NULL) != KVRT_OK) {
        pull_release(n, pl, 0);
        return;
    }
    memcpy(pl->local_blocks, blocks + first, count * sizeof(int32_t));
    pl->want = first + count;
    uint32_t idx = (uint32_t)(pl - n->pulls);
    kvrt_xfer_op_t ops[MAX_PULL_BLOCKS];
    for (uint32_t k = 0; k < count; k++)
        ops[k] = (kvrt_xfer_op_t){
            .opcode = KVRT_XFER_READ, .local = n->landing_region,
            .local_offset = ((uint64_t)idx * MAX_PULL_BLOCKS + k) * sizeof(soak_dir_entry_t),
            .remote = p->dir_remote,
            .remote_offset =
                (r->hashes[first + k].lo % SOAK_DIR_SLOTS) * sizeof(soak_dir_entry_t),
            .length = sizeof(soak_dir_entry_t)};
    kvrt_xfer_post_params_t pp = {.field_mask = KVRT_XFER_POST_PARAM_TIMEOUT,
                                  .timeout_ms = n->cfg->transfer_timeout_ms};
    pl->count = count; /* blocks held for the arrival, scrubbed unless landed */
    kvrt_status_t st = kvrt_xfer_post(p->peer, ops, count, &pp, &pl->xreq);
    if (st != KVRT_OK) {
        pl->xreq = NULL;
        if (st == KVRT_ERR_UNKNOWN_REGION)
            p->stale = 1;
        n->c.pull_failures++;
        pull_release(n, pl, 0);
    }
}

/* The directory entries landed: read the blocks they name, straight into
 * the request's blocks. */
static void pull_blocks(node_t *n, pull_t *pl)
{
    uint32_t idx = (uint32_t)(pl - n->pulls);
    peer_t *p = &n->peers[pl->peer];
    uint32_t found = 0;
    for (uint32_t k = 0; k < pl->count; k++) {
        const soak_dir_entry_t *e = &n->landing[(uint64_t)idx * MAX_PULL_BLOCKS + k];
        const kvrt_block_hash_t *h = &n->live[pl->live].hashes[pl->first + k];
        if (e->lo != h->lo || e->hi != h->hi ||
            e->check != soak_dir_check(e->lo, e->hi, e->block) ||
            e->block <= 0 || e->block >= (int64_t)n->cfg->pool_blocks)
            break;
        pl->remote_blocks[found++] = (int32_t)e->block;
    }
    kvrt_xfer_request_release(pl->xreq);
    pl->xreq = NULL;
    if (found == 0 || p->dropping || !p->connected) {
        pull_release(n, pl, 0);
        return;
    }
    pl->found = found;
    kvrt_xfer_kv_params_t kp = {
        .field_mask = KVRT_XFER_KV_PARAM_INTEGRITY | KVRT_XFER_KV_PARAM_TIMEOUT,
        .opcode = KVRT_XFER_READ, .local = n->pool_region, .remote = p->pool_remote,
        .local_blocks = pl->local_blocks, .remote_blocks = pl->remote_blocks, .count = found,
        .integrity = 1, .timeout_ms = n->cfg->transfer_timeout_ms};
    kvrt_status_t st = kvrt_xfer_kv_post(p->peer, &kp, &pl->xreq);
    if (st != KVRT_OK) {
        pl->xreq = NULL;
        if (st == KVRT_ERR_UNKNOWN_REGION)
            p->stale = 1;
        n->c.pull_failures++;
        pull_release(n, pl, 0);
        return;
    }
    pl->stage = PULL_BLOCKS;
}

/*
 * The test-only corrupter on the receive path: while armed, every pull or
 * hand-off that lands has one byte past a block's header flipped before
 * the node verifies it, as a damaged delivery would.
 */
int soak_node_corrupt_maybe(node_t *n, int32_t block)
{
    if (!n->corrupt_armed)
        return 0;
    uint32_t page = (uint32_t)(soak_splitmix(&n->rng) % (SOAK_LAYERS * 2));
    uint64_t off = sizeof(kvrt_block_hash_t) +
                   soak_splitmix(&n->rng) % (n->page_bytes - sizeof(kvrt_block_hash_t));
    page_of(n, block, page)[off] ^= 0x5a;
    n->c.corrupt_injected++;
    return 1;
}

/* The blocks landed: the verified leading ones count as computed. */
static void pull_land(node_t *n, pull_t *pl)
{
    soak_node_corrupt_maybe(n, pl->local_blocks[soak_splitmix(&n->rng) % pl->found]);
    uint32_t good = 0;
    for (; good < pl->found; good++) {
        soak_verdict_t v = soak_node_block_check(n, pl->local_blocks[good],
                                            &n->live[pl->live].hashes[pl->first + good]);
        if (v == SOAK_BLOCK_STALE)
            n->c.blocks_stale++;
        if (v == SOAK_BLOCK_CORRUPT)
            n->c.corrupt_rejected++;
        if (v != SOAK_BLOCK_OK)
            break;
    }
    n->c.blocks_pulled += good;
    if (good)
        n->live[pl->live].pulled_end = pl->first + good;
    pull_release(n, pl, good);
}

static void pulls_progress(node_t *n)
{
    for (uint32_t i = 0; i < MAX_PULLS; i++) {
        pull_t *pl = &n->pulls[i];
        if (pl->stage == PULL_FREE)
            continue;
        kvrt_status_t st = kvrt_xfer_request_test(pl->xreq);
        if (st == KVRT_INPROGRESS)
            continue;
        if (st != KVRT_OK) {
            n->c.pull_failures++;
            pull_release(n, pl, 0);
        } else if (pl->stage == PULL_DIR) {
            pull_blocks(n, pl);
        } else {
            pull_land(n, pl);
        }
    }
}

/* ---- admission -------------------------------------------------------------------- */

static void admit_later(node_t *n, uint32_t slot)
{
    n->waiting_admission[n->num_waiting_admission++] = slot;
}

/*
 * A new request gets its prefix, in this order, from a prefill node's
 * hand-off, from this node's tiers, or from its home node's pool; what
 * none of them brings is computed here.
 */
static void admit(node_t *n)
{
    double now = soak_node_now_s();
    for (uint32_t i = 0; i < n->num_waiting_admission; i++) {
        uint32_t slot = n->waiting_admission[i];
        request_t *r = &n->live[slot];
        kvrt_seq_params_t sp = {.field_mask = KVRT_SEQ_PARAM_USER_TAG,
                                .prompt = r->tokens, .prompt_len = r->prompt_len,
                                .max_new_tokens = r->answer_len, .user_tag = slot};
        kvrt_status_t st = kvrt_seq_add(n->sched, &sp, &r->seq);
        if (st != KVRT_OK) {
            if (r->role == ROLE_PREFILL)
                soak_node_request_free(r); /* the decode node's hand-off times out */
            else
                request_end(n, r, KVRT_END_FAILED, st, 0, 0);
            continue;
        }
        if (r->prefill != SOAK_NO_NODE && soak_handoff_accept(n, r, now) == 0)
            continue;
        if (soak_tier_onload_start(n, r))
            continue;
        if (r->role == ROLE_CLIENT && r->home != n->cfg->index)
            pull_start(n, slot);
    }
    n->num_waiting_admission = 0;
}

static void on_request(node_t *n, const uint8_t *buf, size_t len)
{
    soak_msg_request_t m;
    memcpy(&m, buf, sizeof(m));
    if (m.prompt_len == 0 || m.prompt_len > SOAK_MAX_PROMPT || m.answer_len == 0 ||
        m.answer_len > SOAK_MAX_ANSWER ||
        len != sizeof(m) + ((size_t)m.prompt_len + m.answer_len) * 4u) {
        fprintf(stderr, "kvrt-soak node %u: malformed request\n", n->cfg->index);
        _exit(4);
    }
    request_t *r = soak_node_request_slot(n);
    if (!r || n->finishing) {
        request_t tmp = {.id = m.id, .prompt_len = m.prompt_len};
        request_end(n, &tmp, KVRT_END_FAILED, KVRT_ERR_REQUEST_LIMIT, 0, 0);
        return;
    }
    const int32_t *tokens = (const int32_t *)(const void *)(buf + sizeof(m));
    if (soak_node_request_init(n, r, tokens, m.prompt_len, m.answer_len) != 0)
        _exit(5);
    r->used = 1;
    r->role = ROLE_CLIENT;
    r->id = m.id;
    r->home = m.home;
    r->prefill = m.prefill == n->cfg->index ? SOAK_NO_NODE : m.prefill;
    r->arrival_s = soak_node_now_s();
    admit_later(n, (uint32_t)(r - n->live));
}

void soak_node_admit_later(node_t *n, request_t *r)
{
    admit_later(n, (uint32_t)(r - n->live));
}

/* ---- steps ------------------------------------------------------------------------ */

static int drain(node_t *n)
{
    kvrt_seq_info_t ev[64];
    for (;;) {
        uint32_t got = 0;
        kvrt_status_t st = kvrt_sched_drain_ended(n->sched, ev, 64, &got);
        if (st != KVRT_OK)
            return soak_node_die(n, "kvrt_sched_drain_ended", st);
        for (uint32_t i = 0; i < got; i++) {
            if (ev[i].user_tag >= MAX_LIVE || !n->live[ev[i].user_tag].used)
                return soak_node_die(n, "end event of an unknown request", KVRT_ERR_INTERNAL);
            request_t *r = &n->live[ev[i].user_tag];
            if (r->role == ROLE_PREFILL) {
                soak_handoff_serve(n, r, &ev[i]);
                soak_node_request_free(r);
            } else {
                request_end(n, r, ev[i].end_reason, ev[i].status, ev[i].cached_tokens,
                            ev[i].output_tokens);
            }
        }
        if (got < 64)
            return 0;
    }
}

static int commit(node_t *n)
{
    const kvrt_batch_plan_t *plan = n->plan;
    uint32_t nt = 0;
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        request_t *r = &n->live[plan->seqs[i].user_tag];
        if (r->first_computed == UINT32_MAX)
            r->first_computed = plan->seqs[i].num_computed_tokens;
        fill_computed_blocks(n, r, &plan->seqs[i]);
        if (!plan->seqs[i].sample)
            continue;
        uint32_t e = r->emitted < r->answer_len ? r->emitted : r->answer_len - 1;
        n->commit_tokens[nt++] = r->tokens[r->prompt_len + e];
    }
    kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = nt,
                       .tokens = n->commit_tokens};
    kvrt_status_t st = kvrt_sched_commit(n->sched, &c);
    if (st != KVRT_OK)
        return soak_node_die(n, "kvrt_sched_commit", st);
    double t = soak_node_now_s();
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        if (!plan->seqs[i].sample)
            continue;
        request_t *r = &n->live[plan->seqs[i].user_tag];
        if (r->emitted++ == 0) {
            r->first_s = t;
            use_prompt_blocks(n, r);
        }
    }
    n->plan = NULL;
    n->c.steps++;
    return drain(n);
}

static int step(node_t *n)
{
    const kvrt_batch_plan_t *plan = NULL;
    double t = soak_node_now_s();
    soak_handoff_poll(n, t);
    soak_tier_onloads_landed(n);
    kvrt_status_t st = kvrt_sched_step(n->sched, (uint64_t)(t * 1e9), &plan);
    if (st != KVRT_OK)
        return soak_node_die(n, "kvrt_sched_step", st);
    soak_tier_onloads_given_up(n);
    if (drain(n) != 0)
        return 1;
    if (plan->num_seqs == 0)
        return 0;
    /* Copy-on-write of shared blocks, before the step writes (as an engine
     * runs plan->copies first). */
    for (uint32_t i = 0; i < plan->num_copies; i++)
        for (uint32_t p = 0; p < SOAK_LAYERS * 2; p++)
            memcpy(page_of(n, plan->copies[i].dst_block, p),
                   page_of(n, plan->copies[i].src_block, p), n->page_bytes);
    n->c.block_copies += plan->num_copies;
    sim_step_shape_t shape = {0};
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        const kvrt_plan_seq_t *s = &plan->seqs[i];
        if (s->kind == KVRT_PLAN_PREFILL)
            sim_step_add_prefill(&shape, s->num_new_tokens, s->num_computed_tokens);
        else
            sim_step_add_decode(&shape, s->num_new_tokens, s->num_computed_tokens);
    }
    n->plan = plan;
    n->busy_until = t + sim_step_time_us(&n->cost, &shape) * 1e-6 * n->cfg->time_scale;
    return 0;
}

/* ---- setup, messages, finish --------------------------------------------------------- */

static int open_node(node_t *n)
{
    const soak_node_config_t *cfg = n->cfg;
    kvrt_ctx_params_t cp = {.field_mask = KVRT_CTX_PARAM_LOG_LEVEL, .log_level = KVRT_LOG_ERROR};
    kvrt_status_t st = kvrt_ctx_create(&cp, &n->ctx);
    if (st != KVRT_OK)
        return soak_node_die(n, "kvrt_ctx_create", st);
    kvrt_pool_params_t pp = {.layout = {.num_layers = SOAK_LAYERS, .num_kv_heads = SOAK_KV_HEADS,
                                        .head_dim = SOAK_HEAD_DIM,
                                        .tokens_per_block = SOAK_BLOCK_TOKENS},
                             .num_blocks = cfg->pool_blocks};
    if ((st = kvrt_pool_create(n->ctx, &pp, &n->pool)) != KVRT_OK)
        return soak_node_die(n, "kvrt_pool_create", st);
    kvrt_cache_params_t cap = {.field_mask = KVRT_CACHE_PARAM_FINGERPRINT};
    if ((st = kvrt_model_fingerprint("kvrt-soak/model", &pp.layout,
                                     &cap.model_fingerprint)) != KVRT_OK ||
        (st = kvrt_cache_create(n->pool, &cap, &n->cache)) != KVRT_OK ||
        (st = kvrt_cache_root(n->cache, &n->root)) != KVRT_OK)
        return soak_node_die(n, "kvrt_cache_create", st);
    /* Evicted blocks go to host DRAM, then to an SSD file on the node's
     * own small file system (the diskfull fault fills it). */
    kvrt_tier_params_t tp = {.field_mask = KVRT_TIER_PARAM_HOST_BLOCKS | KVRT_TIER_PARAM_SSD |
                                           KVRT_TIER_PARAM_FLAGS,
                             .host_blocks = 256, .ssd_blocks = 1024, .ssd_dir = cfg->ssd_dir,
                             .flags = KVRT_TIER_SSD_BUFFERED};
    if (cfg->ssd_dir && (st = kvrt_tier_create(n->cache, &tp, &n->tier)) != KVRT_OK)
        return soak_node_die(n, "kvrt_tier_create", st);
    if ((st = kvrt_kv_events_create(n->ctx, NULL, &n->events)) != KVRT_OK ||
        (st = kvrt_kv_events_attach(n->events, n->cache, KVRT_KV_TIER_GPU)) != KVRT_OK ||
        (st = kvrt_kv_events_epoch(n->events, &n->epoch, NULL)) != KVRT_OK)
        return soak_node_die(n, "kvrt_kv_events", st);
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                            KVRT_SCHED_PARAM_MAX_SEQS |
                                            KVRT_SCHED_PARAM_MAX_REQUESTS,
                              .max_batch_tokens = 4096, .max_seqs = 64,
                              .max_requests = MAX_LIVE};
    if ((st = kvrt_sched_create(n->ctx, n->pool, n->cache, &sp, &n->sched)) != KVRT_OK)
        return soak_node_die(n, "kvrt_sched_create", st);
    kvrt_pool_info_t info;
    kvrt_pool_info(n->pool, &info);
    n->page_bytes = info.block_bytes / (SOAK_LAYERS * 2);
    kvrt_xfer_agent_params_t ap = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_LISTEN |
                      KVRT_XFER_AGENT_PARAM_TIMEOUT | KVRT_XFER_AGENT_PARAM_RECONNECT,
        .cluster_key = soak_cluster_key, .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_TCP, .listen_address = cfg->listen,
        .default_timeout_ms = cfg->transfer_timeout_ms,
        .reconnect_initial_ms = 50, .reconnect_max_ms = 500, .reconnect_attempts = 4};
    if ((st = kvrt_xfer_agent_create(n->ctx, &ap, &n->agent)) != KVRT_OK)
        return soak_node_die(n, "kvrt_xfer_agent_create", st);
    n->dir = aligned_alloc(4096, SOAK_DIR_SLOTS * sizeof(soak_dir_entry_t));
    n->landing = aligned_alloc(4096, MAX_PULLS * MAX_PULL_BLOCKS * sizeof(soak_dir_entry_t));
    n->commit_tokens = malloc(sizeof(int32_t) * 64);
    n->msg = malloc(MSG_MAX);
    n->events_msg = malloc(sizeof(*n->events_msg));
    if (!n->dir || !n->landing || !n->commit_tokens || !n->msg || !n->events_msg)
        return soak_node_die(n, "allocation", KVRT_ERR_NO_MEMORY);
    memset(n->dir, 0, SOAK_DIR_SLOTS * sizeof(soak_dir_entry_t));
    kvrt_xfer_register_params_t rp = {.field_mask = KVRT_XFER_REGISTER_PARAM_POOL |
                                                    KVRT_XFER_REGISTER_PARAM_ACCESS,
                                      .access = KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE,
                                      .pool = n->pool};
    if ((st = kvrt_xfer_register(n->agent, &rp, &n->pool_region)) != KVRT_OK)
        return soak_node_die(n, "kvrt_xfer_register(pool)", st);
    rp = (kvrt_xfer_register_params_t){.field_mask = KVRT_XFER_REGISTER_PARAM_ACCESS,
                                       .address = n->dir,
                                       .length = SOAK_DIR_SLOTS * sizeof(soak_dir_entry_t),
                                       .access = KVRT_XFER_REMOTE_READ};
    if ((st = kvrt_xfer_register(n->agent, &rp, &n->dir_region)) != KVRT_OK)
        return soak_node_die(n, "kvrt_xfer_register(directory)", st);
    rp = (kvrt_xfer_register_params_t){
        .address = n->landing, .length = MAX_PULLS * MAX_PULL_BLOCKS * sizeof(soak_dir_entry_t)};
    if ((st = kvrt_xfer_register(n->agent, &rp, &n->landing_region)) != KVRT_OK)
        return soak_node_die(n, "kvrt_xfer_register(landing)", st);
    if (soak_handoff_open(n) != 0)
        return 1;
    soak_msg_peer_t hello = {.type = SOAK_MSG_HELLO, .index = cfg->index};
    size_t len = 0;
    kvrt_xfer_agent_address(n->agent, hello.address, sizeof(hello.address));
    kvrt_xfer_region_descriptor(n->pool_region, hello.pool_desc, sizeof(hello.pool_desc), &len);
    hello.pool_desc_len = (uint32_t)len;
    kvrt_xfer_region_descriptor(n->dir_region, hello.dir_desc, sizeof(hello.dir_desc), &len);
    hello.dir_desc_len = (uint32_t)len;
    hello.epoch = n->epoch;
    if (cfg->etcd_endpoint && soak_node_join_etcd(n, &pp.layout, hello.address) != 0)
        return 1;
    soak_node_send(n, &hello, sizeof(hello));
    return 0;
}

static void on_message(node_t *n, const uint8_t *buf, size_t len)
{
    uint32_t type = 0;
    if (len >= 4)
        memcpy(&type, buf, 4);
    if (type == SOAK_MSG_REQUEST && len >= sizeof(soak_msg_request_t)) {
        on_request(n, buf, len);
    } else if (type == SOAK_MSG_PEER && len == sizeof(soak_msg_peer_t)) {
        soak_msg_peer_t m;
        memcpy(&m, buf, sizeof(m));
        peer_learn(n, &m);
    } else if (type == SOAK_MSG_CORRUPT && len == sizeof(soak_msg_corrupt_t)) {
        soak_msg_corrupt_t m;
        memcpy(&m, buf, sizeof(m));
        n->corrupt_armed = m.armed != 0;
    } else if (type == SOAK_MSG_PREFILL && len >= sizeof(soak_msg_prefill_t)) {
        soak_handoff_prefill(n, buf, len);
    } else if (type == SOAK_MSG_SNAPSHOT) {
        soak_node_ship_snapshot(n);
    } else if (type == SOAK_MSG_FINISH) {
        n->finishing = 1;
    } else {
        fprintf(stderr, "kvrt-soak node %u: unknown message %u\n", n->cfg->index, type);
        _exit(4);
    }
}

static int busy(node_t *n)
{
    if (n->plan || n->num_waiting_admission || soak_handoff_pending(n))
        return 1;
    for (uint32_t i = 0; i < MAX_PULLS; i++)
        if (n->pulls[i].stage != PULL_FREE)
            return 1;
    kvrt_sched_stats_t s;
    kvrt_sched_stats(n->sched, &s);
    return s.waiting + s.running + s.ended_undrained > 0;
}

/* Requests left inside at the end: what the scheduler, pool and tier say,
 * on stderr, so a stuck node can be understood from the soak's output. */
static void dump_stuck(node_t *n)
{
    kvrt_sched_stats_t ss;
    kvrt_pool_info_t pi;
    kvrt_tier_stats_t ts = {0};
    kvrt_sched_stats(n->sched, &ss);
    kvrt_pool_info(n->pool, &pi);
    if (n->tier)
        kvrt_tier_stats(n->tier, &ts);
    fprintf(stderr, "kvrt-soak node %u stuck: waiting %llu running %llu awaiting_kv %llu "
                    "(arrivals %llu, expired %llu, failed %llu) preemptions %llu; pool: %u used "
                    "%u cached %u free; tier in flight %u; pulls",
            n->cfg->index, (unsigned long long)ss.waiting, (unsigned long long)ss.running,
            (unsigned long long)ss.awaiting_kv, (unsigned long long)ss.arrivals,
            (unsigned long long)ss.arrivals_expired, (unsigned long long)ss.arrivals_failed,
            (unsigned long long)ss.preemptions, pi.used_blocks, pi.cached_blocks,
            pi.free_blocks, ts.in_flight);
    for (uint32_t i = 0; i < MAX_PULLS; i++)
        if (n->pulls[i].stage != PULL_FREE)
            fprintf(stderr, " [%u: stage %d peer %u]", i, n->pulls[i].stage, n->pulls[i].peer);
    fprintf(stderr, "\n");
    for (uint32_t i = 0, shown = 0; i < MAX_LIVE && shown < 8; i++) {
        request_t *r = &n->live[i];
        kvrt_seq_info_t info;
        const int32_t *blocks = NULL;
        uint32_t nb = 0;
        if (!r->used || kvrt_seq_info(n->sched, r->seq, &info) != KVRT_OK)
            continue;
        kvrt_seq_blocks(n->sched, r->seq, &blocks, &nb, NULL);
        fprintf(stderr, "  request %llu (%s): state %d, prompt %u, computed %u, output %u, "
                        "%u blocks, hand-off %llu, onloading %d\n",
                (unsigned long long)r->id, r->role == ROLE_PREFILL ? "prefill" : "client",
                (int)info.state, r->prompt_len, info.computed_tokens, info.output_tokens, nb,
                (unsigned long long)r->handoff, r->onloading);
        shown++;
    }
}

/* Everything ended: give every resource back and say what was left. */
static int finish(node_t *n)
{
    soak_msg_report_t rep = {.type = SOAK_MSG_REPORT};
    for (uint32_t i = 0; i < MAX_LIVE; i++)
        rep.unfinished += n->live[i].used;
    if (rep.unfinished)
        dump_stuck(n);
    rep.handoffs_left = soak_handoff_pending(n);
    soak_handoff_close_sends(n);
    for (uint32_t i = 0; i < SOAK_MAX_NODES; i++)
        if (n->peers[i].connected)
            peer_drop(n, &n->peers[i]);
    if (n->tier) {
        /* Offloads in flight hold pool blocks until they are copied. */
        kvrt_tier_completion_t done[16];
        uint32_t got = 0;
        kvrt_tier_drain(n->tier, 10000, done, 16, &got);
        soak_tier_poll(n);
    }
    kvrt_xfer_deregister(n->pool_region);
    kvrt_xfer_deregister(n->dir_region);
    kvrt_xfer_deregister(n->landing_region);
    char name[64];
    snprintf(name, sizeof(name), "xfer.0.regions");
    kvrt_ctl_get_u64(n->ctx, name, &rep.registrations);
    snprintf(name, sizeof(name), "xfer.0.outstanding");
    kvrt_ctl_get_u64(n->ctx, name, &rep.outstanding);
    kvrt_pool_info_t info;
    kvrt_pool_info(n->pool, &info);
    rep.used_blocks = info.used_blocks;
    rep.cached_blocks = info.cached_blocks;
    rep.pool_verify = kvrt_pool_verify(n->pool);
    rep.cache_verify = kvrt_cache_verify(n->cache);
    rep.counters = n->c;
    soak_node_send(n, &rep, sizeof(rep));
    kvrt_cluster_etcd_destroy(n->member);
    kvrt_kv_events_destroy(n->events);
    kvrt_tier_destroy(n->tier);
    kvrt_xfer_agent_destroy(n->agent);
    /* After the agent: no peer writes into the pool any more. */
    kvrt_cluster_handoff_recv_destroy(n->recv);
    kvrt_sched_destroy(n->sched);
    kvrt_cache_destroy(n->cache);
    kvrt_ctx_destroy(n->ctx);
    free(n->dir);
    free(n->landing);
    free(n->commit_tokens);
    free(n->msg);
    free(n->events_msg);
    return 0;
}

int soak_node_main(const soak_node_config_t *cfg)
{
    static node_t node;
    node_t *n = &node;
    *n = (node_t){.cfg = cfg, .cost = sim_cost_model_default(), .rng = cfg->seed};
    if (open_node(n) != 0)
        return 1;
    double next_stats = soak_node_now_s() + 1.0, finish_by = INFINITY;
    for (;;) {
        double t = soak_node_now_s();
        int wait_ms = n->plan ? (int)ceil((n->busy_until - t) * 1e3) : 2;
        if (wait_ms < 0)
            wait_ms = 0;
        if (wait_ms > 2)
            wait_ms = 2;
        struct pollfd pfd = {.fd = cfg->control_fd, .events = POLLIN};
        if (poll(&pfd, 1, wait_ms) < 0 && errno != EINTR)
            return 1;
        for (int k = 0; k < 256 && (pfd.revents & (POLLIN | POLLHUP)); k++) {
            ssize_t got = recv(cfg->control_fd, n->msg, MSG_MAX, MSG_DONTWAIT);
            if (got == 0)
                return 1; /* supervisor gone */
            if (got < 0)
                break;
            on_message(n, n->msg, (size_t)got);
        }
        t = soak_node_now_s();
        if (n->plan && t >= n->busy_until && commit(n) != 0)
            return 1;
        if (!n->plan) {
            pulls_progress(n);
            admit(n);
            if (step(n) != 0)
                return 1;
        }
        soak_handoff_progress(n);
        soak_node_ship_events(n);
        soak_tier_poll(n);
        if (t >= next_stats) {
            kvrt_sched_stats_t ss;
            kvrt_pool_info_t pi;
            kvrt_sched_stats(n->sched, &ss);
            kvrt_pool_info(n->pool, &pi);
            soak_msg_stats_t s = {.type = SOAK_MSG_STATS, .counters = n->c,
                                  .running = ss.running, .waiting = ss.waiting,
                                  .free_blocks = pi.free_blocks + pi.cached_blocks};
            soak_node_send(n, &s, sizeof(s));
            next_stats = t + 1.0;
        }
        if (n->finishing && !isfinite(finish_by))
            finish_by = t + 60.0;
        if (n->finishing && (!busy(n) || t > finish_by))
            return finish(n);
    }
}
