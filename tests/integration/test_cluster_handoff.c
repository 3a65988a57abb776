/*
 * test_cluster_handoff.c - prefill/decode hand-off between two processes
 * over TCP on loopback. The test process is the decode node (pool, prefix
 * cache, scheduler, transfer agent, hand-off receiver); a forked child is
 * the prefill node, which fills its own blocks with a known pattern and
 * writes them into the decode node's pool through the ticket it is given.
 *
 * Checked: the blocks land byte for byte (checksummed) and the request
 * then decodes from the arrived prefix; a prefill node killed mid-transfer
 * (SIGKILL) makes the request fail at its deadline, and a stalled one
 * (SIGSTOP) makes it recompute at its deadline while the blocks stay held
 * until the resumed sender closes the transfer; in every case no block,
 * table, registration or transfer is left at the end.
 *
 * The child is forked before the test makes any thread and waits for its
 * mode byte before it makes its own.
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_cluster_handoff_util.h"

#define POOL_BLOCKS 64u
#define PROMPT_LEN 197u /* 12 full blocks of 16 and 5 tokens */
#define ARRIVING 196u   /* all but the last token: 13 blocks */
#define BATCH 4u

/* MODE_CHANNEL: as MODE_NORMAL, but the ticket comes over the cluster
 * channel (the child reports its agent's address first). MODE_SLOW: the
 * send begins, then the prefill takes until the test says go before the
 * first batch. MODE_LIAR: as MODE_STALL (without the signals), with the
 * ticket's budget rewritten to an hour: a sender that ignores its
 * deadline. */
enum child_mode {
    MODE_NORMAL = 'n',
    MODE_KILL = 'k',
    MODE_STALL = 's',
    MODE_CHANNEL = 'c',
    MODE_SLOW = 'w',
    MODE_LIAR = 'l'
};

/* ---- the prefill node (child process) ----------------------------------- */

static bool read_all(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, (uint8_t *)buf + got, len - got);
        if (n <= 0)
            return false;
        got += (size_t)n;
    }
    return true;
}

/* Waits (bounded) until the send is no longer in progress. */
static kvrt_status_t send_wait(kvrt_cluster_handoff_send_t *send, uint32_t timeout_ms)
{
    uint64_t end = txu_now_ms() + timeout_ms;
    kvrt_status_t st;
    while ((st = kvrt_cluster_handoff_send_test(send)) == KVRT_INPROGRESS &&
           txu_now_ms() < end)
        tch_nap_ms(1);
    return st;
}

static void prefill_main(int cmd, int report)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    char mode;
    uint32_t ticket_len = 0;
    if (!read_all(cmd, &mode, 1) || !read_all(cmd, &ticket_len, 4) || ticket_len > 65536u)
        _exit(0);
    uint8_t *ticket = malloc(ticket_len ? ticket_len : KVRT_HANDOFF_TICKET_MAX);
    if (!ticket || !read_all(cmd, ticket, ticket_len))
        _exit(2);
    kvrt_ctx_params_t cp = {.field_mask = KVRT_CTX_PARAM_LOG_LEVEL, .log_level = KVRT_LOG_ERROR};
    kvrt_ctx_t *ctx = NULL;
    if (kvrt_ctx_create(&cp, &ctx) != KVRT_OK)
        _exit(3);
    kvrt_pool_t *pool = txu_pool(ctx, POOL_BLOCKS, KVRT_ORDER_LAYER_MAJOR,
                                 KVRT_KV_SEPARATE);
    kvrt_xfer_agent_t *agent = txu_agent(ctx, 3000);
    kvrt_xfer_region_t *region = txu_register_pool(ctx, agent, pool);
    kvrt_cluster_handoff_sender_params_t sp = {
        .field_mask = KVRT_HANDOFF_SENDER_PARAM_INTEGRITY, .agent = agent, .region = region,
        .integrity = 1};
    kvrt_cluster_handoff_sender_t *sender = NULL;
    if (kvrt_cluster_handoff_sender_create(ctx, &sp, &sender) != KVRT_OK)
        _exit(4);
    kvrt_cluster_channel_t *channel = NULL;
    if (mode == MODE_CHANNEL) {
        kvrt_cluster_channel_params_t chp = {.agent = agent};
        char address[256];
        if (kvrt_cluster_channel_create(ctx, &chp, &channel) != KVRT_OK ||
            kvrt_xfer_agent_address(agent, address, sizeof(address)) != KVRT_OK)
            _exit(13);
        uint16_t alen = (uint16_t)strlen(address);
        if (write(report, &alen, 2) != 2 || write(report, address, alen) != alen)
            _exit(14);
        kvrt_cluster_msg_t m = {0};
        uint32_t got = 0;
        uint64_t end = txu_now_ms() + 10000;
        while (got == 0 && txu_now_ms() < end) {
            kvrt_cluster_channel_poll(channel, tch_now_ns(), &m, 1, &got);
            if (got == 0)
                tch_nap_ms(1);
        }
        if (got != 1 || m.kind != KVRT_CLUSTER_MSG_TICKET)
            _exit(15);
        ticket_len = (uint32_t)m.ticket_bytes;
        memcpy(ticket, m.ticket, ticket_len);
        mode = MODE_NORMAL;
    }
    if (mode == MODE_LIAR && ticket_len >= 40)
        kvrt_store_le32(ticket + 32, 3600000u); /* the budget (handoff_wire.h) */
    kvrt_cluster_handoff_send_t *send = NULL;
    if (kvrt_cluster_handoff_send_begin(sender, ticket, ticket_len, &send) != KVRT_OK)
        _exit(5);
    uint32_t n = 0, first = 0;
    kvrt_cluster_handoff_send_info(send, &n, &first);
    int32_t blocks[POOL_BLOCKS];
    if (n == 0 || n > POOL_BLOCKS - 1 || kvrt_pool_alloc(pool, n, blocks) != KVRT_OK)
        _exit(6);
    for (uint32_t i = 0; i < n; i++)
        tch_block_pattern(pool, blocks[i], first + i, true);

    if (mode == MODE_SLOW) {
        char one = '1', go;
        if (write(report, &one, 1) != 1 || !read_all(cmd, &go, 1))
            _exit(8);
    }
    /* The first batch, as the first chunk of prefill completes. */
    bool failed = kvrt_cluster_handoff_send_blocks(send, blocks, BATCH) != KVRT_OK;
    if (failed && mode != MODE_SLOW)
        _exit(7);
    if (mode != MODE_NORMAL && mode != MODE_SLOW) {
        txu_stat_drained(ctx, "xfer.0.outstanding", 5000);
        char one = '1';
        if (write(report, &one, 1) != 1)
            _exit(8);
        if (mode == MODE_KILL) {
            char c;
            while (read(cmd, &c, 1) > 0)
                ; /* killed here */
            _exit(9);
        }
        char go;
        if (!read_all(cmd, &go, 1)) /* after SIGSTOP and SIGCONT */
            _exit(10);
    }
    for (uint32_t at = BATCH; at < n && !failed; at += BATCH) {
        tch_nap_ms(2); /* the next chunk of prefill */
        uint32_t count = n - at < BATCH ? n - at : BATCH;
        failed = kvrt_cluster_handoff_send_blocks(send, blocks + at, count) != KVRT_OK;
    }
    char verdict = !failed && send_wait(send, 10000) == KVRT_OK ? 'D' : 'F';
    kvrt_cluster_handoff_send_end(send);
    kvrt_pool_free(pool, n, blocks);
    if (write(report, &verdict, 1) != 1)
        _exit(11);
    char c;
    while (read(cmd, &c, 1) > 0)
        ;
    kvrt_cluster_channel_destroy(channel);
    int bad = kvrt_cluster_handoff_sender_destroy(sender) != KVRT_OK;
    bad |= kvrt_xfer_deregister(region) != KVRT_OK;
    kvrt_xfer_agent_destroy(agent);
    kvrt_pool_destroy(pool);
    kvrt_ctx_destroy(ctx);
    free(ticket);
    _exit(bad ? 12 : 0);
}

typedef struct prefill {
    pid_t pid;
    int cmd;    /* write end */
    int report; /* read end */
} prefill_t;

static prefill_t prefill_fork(void)
{
    int cmd[2], rep[2];
    cr_assert_eq(pipe(cmd), 0);
    cr_assert_eq(pipe(rep), 0);
    prefill_t p = {.pid = fork()};
    cr_assert_geq(p.pid, 0);
    if (p.pid == 0) {
        close(cmd[1]);
        close(rep[0]);
        prefill_main(cmd[0], rep[1]);
    }
    close(cmd[0]);
    close(rep[1]);
    p.cmd = cmd[1];
    p.report = rep[0];
    return p;
}

static void prefill_start(prefill_t *p, char mode, const uint8_t *ticket, uint32_t len)
{
    cr_assert_eq(write(p->cmd, &mode, 1), 1);
    cr_assert_eq(write(p->cmd, &len, 4), 4);
    cr_assert_eq(write(p->cmd, ticket, len), (ssize_t)len);
}

static char prefill_report(prefill_t *p, uint32_t timeout_ms)
{
    struct pollfd pfd = {.fd = p->report, .events = POLLIN};
    cr_assert_eq(poll(&pfd, 1, (int)timeout_ms), 1, "the prefill node did not report");
    char c = 0;
    cr_assert_eq(read(p->report, &c, 1), 1);
    return c;
}

static void prefill_end(prefill_t *p)
{
    close(p->cmd);
    int status = 0;
    cr_assert_eq(waitpid(p->pid, &status, 0), p->pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "prefill status %d", status);
    close(p->report);
}

/* ---- the decode node (this process) ------------------------------------- */

typedef struct decode {
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool;
    kvrt_cache_t *cache;
    kvrt_sched_t *sched;
    kvrt_xfer_agent_t *agent;
    kvrt_xfer_region_t *region;
    kvrt_cluster_handoff_recv_t *recv;
    kvrt_cluster_channel_t *channel; /* NULL: the ticket travels by pipe */
} decode_t;

/* The decode node's channel polled first when it has one: it feeds the
 * receiver the batch messages. */
static void decode_poll_channel(decode_t *d)
{
    uint32_t n = 0;
    if (d->channel)
        ASSERT_OK(d->ctx, kvrt_cluster_channel_poll(d->channel, tch_now_ns(), NULL, 0, &n));
}

/* refuse_ms 0: the receiver's default. */
static decode_t decode_up_refusing(kvrt_handoff_failure_policy_t policy, uint32_t timeout_ms,
                                   uint32_t quarantine_ms, uint32_t refuse_ms)
{
    decode_t d = {0};
    d.ctx = txu_ctx();
    d.pool = txu_pool(d.ctx, POOL_BLOCKS, KVRT_ORDER_LAYER_MAJOR, KVRT_KV_SEPARATE);
    ASSERT_OK(d.ctx, kvrt_cache_create(d.pool, NULL, &d.cache));
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK, .use_watermark = 0};
    ASSERT_OK(d.ctx, kvrt_sched_create(d.ctx, d.pool, d.cache, &sp, &d.sched));
    d.agent = txu_agent(d.ctx, 3000);
    d.region = txu_register_pool(d.ctx, d.agent, d.pool);
    kvrt_cluster_handoff_recv_params_t rp = {
        .field_mask = KVRT_HANDOFF_RECV_PARAM_TIMEOUT | KVRT_HANDOFF_RECV_PARAM_POLICY |
                      KVRT_HANDOFF_RECV_PARAM_QUARANTINE,
        .agent = d.agent, .region = d.region, .sched = d.sched, .timeout_ms = timeout_ms,
        .on_failure = policy, .quarantine_ms = quarantine_ms, .refuse_ms = refuse_ms};
    if (refuse_ms)
        rp.field_mask |= KVRT_HANDOFF_RECV_PARAM_REFUSE;
    ASSERT_OK(d.ctx, kvrt_cluster_handoff_recv_create(d.ctx, &rp, &d.recv));
    return d;
}

static decode_t decode_up(kvrt_handoff_failure_policy_t policy, uint32_t timeout_ms,
                          uint32_t quarantine_ms)
{
    return decode_up_refusing(policy, timeout_ms, quarantine_ms, 0);
}

static kvrt_seq_id_t add_request(decode_t *d)
{
    int32_t prompt[PROMPT_LEN];
    for (uint32_t i = 0; i < PROMPT_LEN; i++)
        prompt[i] = (int32_t)(1000 + i);
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = PROMPT_LEN, .max_new_tokens = 3};
    kvrt_seq_id_t id = 0;
    ASSERT_OK(d->ctx, kvrt_seq_add(d->sched, &p, &id));
    return id;
}

static uint32_t accept_and_ticket(decode_t *d, kvrt_seq_id_t seq, uint8_t *ticket,
                                  kvrt_handoff_id_t *h)
{
    kvrt_handoff_accept_params_t ap = {.num_tokens = ARRIVING};
    ASSERT_OK(d->ctx, kvrt_cluster_handoff_accept(d->recv, seq, &ap, tch_now_ns(), h));
    size_t len = 0;
    ASSERT_OK(d->ctx, kvrt_cluster_handoff_ticket(d->recv, *h, ticket,
                                                  KVRT_HANDOFF_TICKET_MAX, &len));
    kvrt_seq_info_t info;
    ASSERT_OK(d->ctx, kvrt_seq_info(d->sched, seq, &info));
    cr_assert_eq(info.state, KVRT_SEQ_WAITING_KV);
    return (uint32_t)len;
}

/* Polls (bounded) until the hand-off ends; returns its completion. */
static kvrt_handoff_completion_t wait_handoff(decode_t *d, uint32_t timeout_ms)
{
    uint64_t end = txu_now_ms() + timeout_ms;
    kvrt_handoff_completion_t c = {0};
    uint32_t n = 0;
    while (n == 0 && txu_now_ms() < end) {
        decode_poll_channel(d);
        ASSERT_OK(d->ctx, kvrt_cluster_handoff_poll(d->recv, tch_now_ns(), &c, 1, &n));
        if (n == 0)
            tch_nap_ms(2);
    }
    cr_assert_eq(n, 1, "the hand-off did not end within %u ms", timeout_ms);
    return c;
}

static uint32_t quarantined(decode_t *d)
{
    kvrt_handoff_recv_stats_t st;
    uint32_t n = 0;
    decode_poll_channel(d);
    ASSERT_OK(d->ctx, kvrt_cluster_handoff_poll(d->recv, tch_now_ns(), NULL, 0, &n));
    ASSERT_OK(d->ctx, kvrt_cluster_handoff_recv_stats(d->recv, &st));
    return st.quarantined;
}

/* Polls (bounded by `ms`) until no hand-off's blocks are quarantined. */
static void wait_quarantine_drained(decode_t *d, uint64_t ms, const char *why)
{
    uint64_t end = txu_now_ms() + ms;
    while (quarantined(d) > 0 && txu_now_ms() < end)
        tch_nap_ms(5);
    cr_assert_eq(quarantined(d), 0, "%s", why);
}

/* Accepts a hand-off for `seq` and starts the prefill child on its ticket
 * in `mode`. */
static kvrt_handoff_id_t hand_off(decode_t *d, prefill_t *p, kvrt_seq_id_t seq, char mode)
{
    static uint8_t ticket[KVRT_HANDOFF_TICKET_MAX];
    kvrt_handoff_id_t h = 0;
    uint32_t len = accept_and_ticket(d, seq, ticket, &h);
    prefill_start(p, mode, ticket, len);
    return h;
}

/* Steps (bounded) until every request ended; returns the last end event. */
static kvrt_seq_info_t run_to_end(decode_t *d)
{
    kvrt_seq_info_t ended = {0};
    for (int i = 0; i < 100 && ended.id == 0; i++) {
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(d->ctx, kvrt_sched_step(d->sched, tch_now_ns(), &plan));
        if (plan->num_seqs > 0)
            tch_commit(d->ctx, d->sched, plan, 7);
        uint32_t n = 0;
        ASSERT_OK(d->ctx, kvrt_sched_drain_ended(d->sched, &ended, 1, &n));
    }
    cr_assert_neq(ended.id, 0, "the request did not end");
    return ended;
}

/* Tears the decode node down and checks that nothing was left behind:
 * no hand-off, block, table, registration or transfer. */
static void decode_down(decode_t *d)
{
    ASSERT_OK(d->ctx, kvrt_cluster_channel_destroy(d->channel));
    kvrt_handoff_recv_stats_t st;
    ASSERT_OK(d->ctx, kvrt_cluster_handoff_recv_stats(d->recv, &st));
    cr_assert_eq(st.live, 0);
    cr_assert_eq(st.quarantined, 0);
    ASSERT_OK(d->ctx, kvrt_cluster_handoff_recv_destroy(d->recv));
    kvrt_pool_info_t info;
    ASSERT_OK(d->ctx, kvrt_pool_info(d->pool, &info));
    cr_assert_eq(info.used_blocks, 0, "blocks stranded: %u used", info.used_blocks);
    cr_assert_eq(info.live_tables, 0, "tables stranded: %u", info.live_tables);
    ASSERT_OK(d->ctx, kvrt_pool_verify(d->pool));
    ASSERT_OK(d->ctx, kvrt_cache_verify(d->cache));
    cr_assert_eq(txu_stat_drained(d->ctx, "xfer.0.outstanding", 5000), 0);
    ASSERT_OK(d->ctx, kvrt_xfer_deregister(d->region));
    cr_assert_eq(txu_stat(d->ctx, "xfer.0.regions"), 0);
    kvrt_xfer_agent_destroy(d->agent);
    kvrt_sched_destroy(d->sched);
    kvrt_cache_destroy(d->cache);
    kvrt_pool_destroy(d->pool);
    kvrt_ctx_destroy(d->ctx);
}

Test(cluster_handoff, blocks_land_verified_and_the_request_decodes_from_them, .timeout = 60)
{
    prefill_t p = prefill_fork();
    decode_t d = decode_up(KVRT_HANDOFF_FAIL, 10000, 20000);
    kvrt_seq_id_t seq = add_request(&d);
    kvrt_handoff_id_t h = hand_off(&d, &p, seq, MODE_NORMAL);

    kvrt_handoff_completion_t c = wait_handoff(&d, 15000);
    cr_assert_eq(c.handoff, h);
    cr_assert_eq(c.seq, seq);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_LANDED, "outcome %u status %d", c.outcome, c.status);
    cr_assert_eq(c.status, KVRT_OK);
    cr_assert_eq(c.blocks, 13);
    cr_assert_eq(c.landed_blocks, 13);
    cr_assert_eq(prefill_report(&p, 15000), 'D');

    /* The arrived K/V is the prefill node's, byte for byte. */
    const int32_t *blocks = NULL;
    uint32_t num_blocks = 0;
    ASSERT_OK(d.ctx, kvrt_seq_blocks(d.sched, seq, &blocks, &num_blocks, NULL));
    cr_assert_eq(num_blocks, 13);
    for (uint32_t i = 0; i < num_blocks; i++)
        cr_assert(tch_block_pattern(d.pool, blocks[i], i, false), "block %u differs", i);

    /* The request starts from the arrived prefix: only the last prompt
     * token is computed here. */
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(d.ctx, kvrt_sched_step(d.sched, tch_now_ns(), &plan));
    cr_assert_eq(plan->num_seqs, 1);
    cr_assert_eq(plan->seqs[0].num_computed_tokens, ARRIVING);
    cr_assert_eq(plan->seqs[0].num_new_tokens, 1);
    tch_commit(d.ctx, d.sched, plan, 7);
    kvrt_seq_info_t ended = run_to_end(&d);
    cr_assert_eq(ended.end_reason, KVRT_END_LENGTH);

    /* A second poll reports nothing more; the ticket is dead. */
    uint32_t n = 9;
    ASSERT_OK(d.ctx, kvrt_cluster_handoff_poll(d.recv, tch_now_ns(), NULL, 0, &n));
    cr_assert_eq(n, 0);
    size_t tl = 0;
    uint8_t ticket[KVRT_HANDOFF_TICKET_MAX];
    ASSERT_STATUS(KVRT_ERR_NOT_FOUND,
                  kvrt_cluster_handoff_ticket(d.recv, h, ticket, sizeof(ticket), &tl));
    kvrt_handoff_recv_stats_t st;
    ASSERT_OK(d.ctx, kvrt_cluster_handoff_recv_stats(d.recv, &st));
    cr_assert_eq(st.landed, 1);
    cr_assert_eq(st.blocks_landed, 13);
    cr_assert_eq(st.refused, 0);
    prefill_end(&p);
    decode_down(&d);
}

Test(cluster_handoff, prefill_node_killed_mid_transfer_fails_the_request_by_its_deadline,
     .timeout = 60)
{
    prefill_t p = prefill_fork();
    const uint32_t timeout_ms = 1500;
    decode_t d = decode_up(KVRT_HANDOFF_FAIL, timeout_ms, 500);
    kvrt_seq_id_t seq = add_request(&d);
    uint64_t start = txu_now_ms();
    kvrt_handoff_id_t h = hand_off(&d, &p, seq, MODE_KILL);
    cr_assert_eq(prefill_report(&p, 10000), '1');
    cr_assert_eq(kill(p.pid, SIGKILL), 0);
    cr_assert_eq(waitpid(p.pid, NULL, 0), p.pid);
    close(p.cmd);
    close(p.report);

    kvrt_handoff_completion_t c = wait_handoff(&d, timeout_ms + 10000);
    uint64_t took = txu_now_ms() - start;
    cr_assert_eq(c.handoff, h);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_FAILED);
    cr_assert_eq(c.status, KVRT_ERR_TIMEOUT);
    cr_assert_geq(took, timeout_ms, "failed before its deadline (%llu ms)",
                  (unsigned long long)took);
    /* The request ended at once, aborted. */
    kvrt_seq_info_t ended = {0};
    uint32_t n = 0;
    ASSERT_OK(d.ctx, kvrt_sched_drain_ended(d.sched, &ended, 1, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(ended.id, seq);
    cr_assert_eq(ended.end_reason, KVRT_END_ABORTED);

    /* Its blocks are held until the quarantine ends, then returned. */
    cr_assert_eq(quarantined(&d), 1);
    wait_quarantine_drained(&d, 10000, "the quarantine did not end");
    decode_down(&d);
}

Test(cluster_handoff, stalled_prefill_node_makes_the_request_recompute_and_its_blocks_wait,
     .timeout = 90)
{
    prefill_t p = prefill_fork();
    const uint32_t timeout_ms = 1500;
    /* A long quarantine: the blocks must come back through the resumed
     * sender's closing messages, not the clock. */
    decode_t d = decode_up(KVRT_HANDOFF_RECOMPUTE, timeout_ms, 600000);
    kvrt_seq_id_t seq = add_request(&d);
    kvrt_handoff_id_t h = hand_off(&d, &p, seq, MODE_STALL);
    cr_assert_eq(prefill_report(&p, 10000), '1');
    cr_assert_eq(kill(p.pid, SIGSTOP), 0);

    kvrt_handoff_completion_t c = wait_handoff(&d, timeout_ms + 10000);
    cr_assert_eq(c.handoff, h);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_RECOMPUTED);
    cr_assert_eq(c.status, KVRT_ERR_TIMEOUT);
    cr_assert_eq(quarantined(&d), 1);
    kvrt_pool_info_t info;
    ASSERT_OK(d.ctx, kvrt_pool_info(d.pool, &info));
    cr_assert_geq(info.used_blocks, 13, "the stalled hand-off's blocks are held");

    /* The request recomputes its prompt and finishes meanwhile. */
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(d.ctx, kvrt_sched_step(d.sched, tch_now_ns(), &plan));
    cr_assert_eq(plan->num_seqs, 1);
    cr_assert_eq(plan->seqs[0].id, seq);
    cr_assert_eq(plan->seqs[0].num_computed_tokens, 0);
    tch_commit(d.ctx, d.sched, plan, 7);
    kvrt_seq_info_t ended = run_to_end(&d);
    cr_assert_eq(ended.end_reason, KVRT_END_LENGTH);

    /* The sender wakes up and finishes writing into the held blocks; its
     * closing messages release them. */
    cr_assert_eq(kill(p.pid, SIGCONT), 0);
    char go = 'c';
    cr_assert_eq(write(p.cmd, &go, 1), 1);
    cr_assert_neq(prefill_report(&p, 20000), 0);
    wait_quarantine_drained(&d, 20000, "the resumed sender's closing did not release the blocks");
    kvrt_handoff_recv_stats_t st;
    ASSERT_OK(d.ctx, kvrt_cluster_handoff_recv_stats(d.recv, &st));
    cr_assert_eq(st.recomputed, 1);
    cr_assert_eq(st.landed, 0);
    prefill_end(&p);
    decode_down(&d);
}

Test(cluster_handoff, a_ticket_carried_by_the_cluster_channel_lands_across_processes,
     .timeout = 60)
{
    prefill_t p = prefill_fork();
    decode_t d = decode_up(KVRT_HANDOFF_FAIL, 10000, 20000);
    kvrt_cluster_channel_params_t chp = {
        .field_mask = KVRT_CHANNEL_PARAM_RECV, .agent = d.agent, .recv = d.recv};
    ASSERT_OK(d.ctx, kvrt_cluster_channel_create(d.ctx, &chp, &d.channel));
    prefill_start(&p, MODE_CHANNEL, NULL, 0);
    struct pollfd pfd = {.fd = p.report, .events = POLLIN};
    cr_assert_eq(poll(&pfd, 1, 15000), 1, "the prefill node did not give its address");
    uint16_t alen = 0;
    char address[256] = {0};
    cr_assert(read_all(p.report, &alen, 2) && alen < sizeof(address) &&
              read_all(p.report, address, alen));

    kvrt_seq_id_t seq = add_request(&d);
    static uint8_t ticket[KVRT_HANDOFF_TICKET_MAX];
    kvrt_handoff_id_t h = 0;
    uint32_t len = accept_and_ticket(&d, seq, ticket, &h);
    ASSERT_OK(d.ctx, kvrt_cluster_channel_send_ticket(d.channel, address, ticket, len));

    kvrt_handoff_completion_t c = wait_handoff(&d, 15000);
    cr_assert_eq(c.handoff, h);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_LANDED, "outcome %u status %d", c.outcome, c.status);
    cr_assert_eq(c.landed_blocks, 13);
    cr_assert_eq(prefill_report(&p, 15000), 'D');
    const int32_t *blocks = NULL;
    uint32_t num_blocks = 0;
    ASSERT_OK(d.ctx, kvrt_seq_blocks(d.sched, seq, &blocks, &num_blocks, NULL));
    for (uint32_t i = 0; i < num_blocks; i++)
        cr_assert(tch_block_pattern(d.pool, blocks[i], i, false), "block %u differs", i);
    kvrt_seq_info_t ended = run_to_end(&d);
    cr_assert_eq(ended.end_reason, KVRT_END_LENGTH);
    kvrt_cluster_channel_stats_t cs;
    ASSERT_OK(d.ctx, kvrt_cluster_channel_stats(d.channel, &cs));
    cr_assert_eq(cs.sent, 1);
    cr_assert_geq(cs.handoff_notes, 1);
    cr_assert_eq(cs.foreign + cs.refused, 0);
    prefill_end(&p);
    decode_down(&d);
}

/* Marks every free block of the decode pool as someone else's (allocated,
 * the pattern of 1000 + i for the hand-off's i-th block); *nfree gets how
 * many were taken into all[]. */
static void give_away(decode_t *d, const int32_t *given, uint32_t count, int32_t *all,
                      uint32_t *nfree)
{
    kvrt_seq_info_t ended;
    uint32_t n = 0;
    ASSERT_OK(d->ctx, kvrt_sched_drain_ended(d->sched, &ended, 1, &n));
    kvrt_pool_info_t info;
    ASSERT_OK(d->ctx, kvrt_pool_info(d->pool, &info));
    *nfree = info.free_blocks + info.cached_blocks;
    ASSERT_OK(d->ctx, kvrt_pool_alloc(d->pool, *nfree, all));
    for (uint32_t i = 0; i < count; i++)
        tch_block_pattern(d->pool, given[i], 1000 + i, true);
}

static void assert_untouched(decode_t *d, const int32_t *given, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++)
        cr_assert(tch_block_pattern(d->pool, given[i], 1000 + i, false),
                  "a sender past the deadline wrote into block %d, given to another request",
                  given[i]);
}

/* Admits a request, starts the child in `mode` on its ticket and waits
 * for its first report; given[] gets the hand-off's blocks in the decode
 * pool (copied at accept). Returns how many. */
static uint32_t start_late_sender(decode_t *d, prefill_t *p, char mode, int32_t *given)
{
    kvrt_seq_id_t seq = add_request(d);
    hand_off(d, p, seq, mode);
    const int32_t *view = NULL;
    uint32_t nb = 0;
    ASSERT_OK(d->ctx, kvrt_seq_blocks(d->sched, seq, &view, &nb, NULL));
    cr_assert_eq(nb, 13);
    memcpy(given, view, nb * sizeof(int32_t));
    cr_assert_eq(prefill_report(p, 10000), '1');
    return nb;
}

/* Lets the late sender go on: it must report failure and land nothing in
 * the given-away blocks, which then go back. */
static void finish_late_sender(decode_t *d, prefill_t *p, const int32_t *given, uint32_t nb,
                               int32_t *all, uint32_t nfree)
{
    char go = 'g';
    cr_assert_eq(write(p->cmd, &go, 1), 1);
    cr_assert_eq(prefill_report(p, 15000), 'F');
    tch_nap_ms(300);
    assert_untouched(d, given, nb);
    ASSERT_OK(d->ctx, kvrt_pool_free(d->pool, nfree, all));
}

static void wait_released(decode_t *d)
{
    uint64_t end = txu_now_ms() + 10000;
    while (quarantined(d) > 0 && txu_now_ms() < end)
        tch_nap_ms(5);
    cr_assert_eq(quarantined(d), 0);
}

/*
 * Found by kvrt-soak (a prefill node that got its ticket late and prefilled
 * a long prompt past the decode node's deadline + quarantine): the decode
 * node gave the hand-off's blocks back, another request took them, and the
 * sender's writes then landed in them. The ticket carries the time left to
 * the deadline, which the sender counts from when it reads the ticket, so
 * a prefill that ends past it posts nothing. (A ticket that reaches the
 * prefill node later than the quarantine after it was written is beyond
 * what the budget can tell: hosts' clocks differ. That is what the
 * quarantine is for.)
 */
Test(cluster_handoff, a_sender_past_deadline_and_quarantine_writes_nothing, .timeout = 60)
{
    const uint32_t timeout_ms = 300;
    prefill_t p = prefill_fork();
    decode_t d = decode_up(KVRT_HANDOFF_FAIL, timeout_ms, 100);
    int32_t given[POOL_BLOCKS];
    uint32_t nb = start_late_sender(&d, &p, MODE_SLOW, given); /* it holds the ticket */
    uint64_t begun = txu_now_ms();

    kvrt_handoff_completion_t c = wait_handoff(&d, 5000);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_FAILED);
    cr_assert_eq(c.blocks, nb);
    wait_released(&d);
    /* Its own count of the budget ran out too (it began after accept). */
    while (txu_now_ms() < begun + timeout_ms + 20)
        tch_nap_ms(5);
    int32_t all[POOL_BLOCKS];
    uint32_t nfree = 0;
    give_away(&d, given, nb, all, &nfree);

    /* The prefill ends: the sender posts nothing and says so. */
    finish_late_sender(&d, &p, given, nb, all, nfree);
    /* An honest sender needed no revocation. */
    cr_assert_eq(txu_stat(d.ctx, "xfer.0.revocations"), 0);
    prefill_end(&p);
    decode_down(&d);
}

/*
 * The decode node does not rely on the sender's honesty: a sender that
 * wrote a batch, stalled, and ignores its deadline is revoked when its
 * quarantine ends, before the blocks go back, and its name is refused for
 * a while; resumed, it dials again and lands nothing.
 */
Test(cluster_handoff, a_stalled_sender_that_ignores_its_deadline_is_cut_off, .timeout = 60)
{
    prefill_t p = prefill_fork();
    decode_t d = decode_up_refusing(KVRT_HANDOFF_FAIL, 2000, 300, 60000);
    int32_t given[POOL_BLOCKS];
    uint32_t nb = start_late_sender(&d, &p, MODE_LIAR, given); /* its first batch landed */

    kvrt_handoff_completion_t c = wait_handoff(&d, 10000);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_FAILED);
    cr_assert_eq(c.status, KVRT_ERR_TIMEOUT);
    cr_assert_eq(quarantined(&d), 1);
    cr_assert_eq(txu_stat(d.ctx, "xfer.0.revocations"), 0);
    wait_released(&d);
    cr_assert_eq(txu_stat(d.ctx, "xfer.0.revocations"), 1, "the sender was not revoked");
    cr_assert_eq(txu_stat(d.ctx, "xfer.0.peers"), 0);
    int32_t all[POOL_BLOCKS];
    uint32_t nfree = 0;
    give_away(&d, given, nb, all, &nfree);
    /* Its agent dials again meanwhile (reconnect backoff 20..200 ms). */
    tch_nap_ms(600);

    finish_late_sender(&d, &p, given, nb, all, nfree);
    cr_assert_eq(txu_stat(d.ctx, "xfer.0.peers"), 0, "the refused sender came back");
    prefill_end(&p);
    decode_down(&d);
}
