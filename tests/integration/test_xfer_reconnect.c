/*
 * test_xfer_reconnect.c - reconnection never holds the agent's upkeep
 * thread. A dialed peer's listener goes away and a socket takes its
 * address that accepts connections and never answers (a silent address:
 * every attempt waits out its 2 s handshake deadline). Meanwhile the same
 * agent's request to another peer, which never answers, must still fail
 * on its timeout (the reset that follows is repaired by that peer's own
 * reconnection, beside the stuck one), and a third peer's broken connection must still be
 * noticed; before, each attempt ran on the upkeep thread and held the
 * timeouts, revocations and clean-up behind it for up to 2 s. The peer
 * reconnects once a real listener is back on its address.
 */
#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test_xfer_flood.h"

static kvrt_xfer_agent_t *dialer(kvrt_ctx_t *ctx)
{
    kvrt_xfer_agent_params_t p = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_CONNECTIONS |
                      KVRT_XFER_AGENT_PARAM_RECONNECT,
        .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_TCP, .connections_per_peer = 1,
        /* Short pauses between attempts: the agent is almost always in
         * the middle of one. */
        .reconnect_initial_ms = 10, .reconnect_max_ms = 20, .reconnect_attempts = 1000};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &p, &a));
    return a;
}

/* A socket listening on `text` (the address an agent just left; retried
 * for up to a second) that nobody answers on. */
static int silent_listener(const char *text)
{
    kvrt_xfer_addr_t addr, bound;
    cr_assert_eq(kvrt_xfer_addr_parse(text, &addr), KVRT_OK);
    int fd = -1;
    for (int i = 0; i < 100 && kvrt_xfer_sc_listen(&addr, &bound, &fd) != KVRT_OK; i++) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_geq(fd, 0, "cannot listen on %s again", text);
    return fd;
}

static kvrt_xfer_peer_state_t peer_state(kvrt_ctx_t *ctx, kvrt_xfer_peer_t *peer)
{
    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    ASSERT_OK(ctx, kvrt_xfer_peer_info(peer, &info));
    return info.state;
}

static bool wait_state(kvrt_ctx_t *ctx, kvrt_xfer_peer_t *peer, kvrt_xfer_peer_state_t want,
                       uint32_t timeout_ms)
{
    uint64_t end = txu_now_ms() + timeout_ms;
    while (peer_state(ctx, peer) != want && txu_now_ms() < end) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    return peer_state(ctx, peer) == want;
}

Test(xfer_reconnect, a_silent_address_holds_no_timeout_back, .timeout = 90)
{
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = dialer(ctx), *b = txu_agent(ctx, 3000), *c = txu_agent(ctx, 3000);
    char b_text[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(b, b_text, sizeof(b_text)));
    kvrt_xfer_peer_t *to_b = txu_connect(ctx, a, b), *to_c = txu_connect(ctx, a, c);
    /* A listener that completes every handshake, then never answers. */
    txr_holder_t mute;
    txr_holder_start(&mute, "127.0.0.1:0", 1);
    kvrt_xfer_peer_t *to_mute = NULL;
    ASSERT_OK(ctx, kvrt_xfer_connect(a, mute.address, 5000, &to_mute));

    /* b goes; a socket that never answers takes its address. */
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(b));
    int silent = silent_listener(b_text);
    cr_assert(wait_state(ctx, to_b, KVRT_XFER_PEER_RECONNECTING, 5000));

    uint8_t *mem = aligned_alloc(4096, 65536);
    memset(mem, 1, 65536);
    kvrt_xfer_region_t *local = txu_register(ctx, a, mem, 65536, KVRT_XFER_REMOTE_WRITE);
    kvrt_xfer_remote_t *rem = txr_import(ctx, to_mute, local);
    int held[4];
    for (int round = 0; round < 4; round++) {
        /* A timed-out write resets its connection: the mute peer comes
         * back first (its own reconnection, beside b's). */
        cr_assert(wait_state(ctx, to_mute, KVRT_XFER_PEER_CONNECTED, 5000));
        /* An attempt has connected to the silent socket and waits for a
         * CHALLENGE that never comes (2 s). */
        struct pollfd p = {.fd = silent, .events = POLLIN};
        cr_assert_eq(poll(&p, 1, 5000), 1, "no reconnection attempt reached the address");
        held[round] = accept(silent, NULL, NULL);
        cr_assert_geq(held[round], 0);
        if (round < 3) {
            /* A request to the mute peer, 200 ms timeout: it must fail on
             * time; it used to wait for the attempt to give up. */
            kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = local, .remote = rem,
                                 .length = 4096};
            kvrt_xfer_post_params_t pp = {.field_mask = KVRT_XFER_POST_PARAM_TIMEOUT,
                                          .timeout_ms = 200};
            kvrt_xfer_request_t *req = NULL;
            uint64_t t0 = txu_now_ms();
            ASSERT_OK(ctx, kvrt_xfer_post(to_mute, &op, 1, &pp, &req));
            kvrt_status_t st = kvrt_xfer_request_wait(req, 5000);
            uint64_t took = txu_now_ms() - t0;
            ASSERT_STATUS(KVRT_ERR_TIMEOUT, st);
            /* An attempt holds for 2 s: anything under 1.5 s means the
             * timeout did not wait for it, with room for a loaded machine. */
            cr_assert_lt(took, 1500, "a 200 ms timeout fired after %llu ms",
                         (unsigned long long)took);
            ASSERT_OK(ctx, kvrt_xfer_request_release(req));
        } else {
            /* A broken connection is noticed and cleaned up meanwhile. */
            uint64_t t0 = txu_now_ms();
            ASSERT_OK(ctx, kvrt_xfer_agent_destroy(c));
            c = NULL;
            cr_assert(wait_state(ctx, to_c, KVRT_XFER_PEER_RECONNECTING, 5000));
            kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
            for (uint64_t end = txu_now_ms() + 5000; txu_now_ms() < end;) {
                ASSERT_OK(ctx, kvrt_xfer_peer_info(to_c, &info));
                if (info.connections == 0)
                    break;
            }
            uint64_t took = txu_now_ms() - t0;
            cr_assert_eq(info.connections, 0);
            cr_assert_lt(took, 1500, "a broken connection took %llu ms to close",
                         (unsigned long long)took);
        }
    }
    cr_assert_eq(peer_state(ctx, to_b), KVRT_XFER_PEER_RECONNECTING);

    /* A real listener back on the address: the peer reconnects. */
    for (int i = 0; i < 4; i++)
        close(held[i]);
    close(silent);
    kvrt_xfer_agent_params_t bp = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_LISTEN,
        .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_TCP, .listen_address = b_text};
    b = NULL;
    for (int i = 0; i < 100 && kvrt_xfer_agent_create(ctx, &bp, &b) != KVRT_OK; i++) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_not_null(b, "cannot listen on %s again", b_text);
    cr_assert(wait_state(ctx, to_b, KVRT_XFER_PEER_CONNECTED, 10000),
              "the peer did not reconnect to a listener back on its address");

    ASSERT_OK(ctx, kvrt_xfer_disconnect(to_mute));
    ASSERT_OK(ctx, kvrt_xfer_disconnect(to_b));
    ASSERT_OK(ctx, kvrt_xfer_disconnect(to_c));
    txr_holder_stop(&mute);
    ASSERT_OK(ctx, kvrt_xfer_deregister(local));
    cr_assert_eq(txu_stat(ctx, "xfer.0.outstanding"), 0);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(b));
    kvrt_ctx_destroy(ctx);
    free(mem);
}

/* Threads of this process named `name` (kvrt names the threads it starts;
 * counting them all would also count a sanitizer's or io_uring's). */
static int threads_named(const char *name)
{
    DIR *d = opendir("/proc/self/task");
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char path[320], comm[32] = "";
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue; /* it ended meanwhile */
        if (fgets(comm, sizeof(comm), f))
            comm[strcspn(comm, "\n")] = '\0';
        fclose(f);
        n += strcmp(comm, name) == 0;
    }
    closedir(d);
    return n;
}

/* Agent destroy while an attempt waits on a silent address: it waits for
 * that attempt (at most its 2 s), and nothing is left behind: not even the
 * attempt's thread, which destroy joins (a thread still running once its
 * agent is gone could outlive the code it runs, or the process's exit
 * checks). */
Test(xfer_reconnect, destroy_during_an_attempt, .timeout = 60)
{
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = dialer(ctx), *b = txu_agent(ctx, 3000);
    char b_text[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(b, b_text, sizeof(b_text)));
    kvrt_xfer_peer_t *to_b = txu_connect(ctx, a, b);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(b));
    int silent = silent_listener(b_text);
    struct pollfd p = {.fd = silent, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 5000), 1);
    int held = accept(silent, NULL, NULL);
    (void)to_b;
    cr_assert_eq(threads_named("kvrt-reconnect"), 1, "the attempt runs on a thread of its own");
    uint64_t t0 = txu_now_ms();
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    cr_assert_lt(txu_now_ms() - t0, 5000);
    cr_assert_eq(threads_named("kvrt-reconnect"), 0, "the attempt's thread outlived destroy");
    close(held);
    close(silent);
    kvrt_ctx_destroy(ctx);
}
