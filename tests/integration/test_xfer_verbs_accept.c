/*
 * test_xfer_verbs_accept.c - the verbs backend's connection set-up after
 * the handshake (SETUP, QP_INFO, READY on the side channel) runs beside
 * the listener's accept loop, not on it. The hostile peers here hold the
 * cluster key: they complete the handshake as verbs dialers, then stall
 * or speak an older set-up. A stalled set-up delays no other peer's
 * connect; set-ups beyond the pending cap abort the oldest; agent destroy
 * does not wait out a stalled set-up; a SETUP of version 2 is refused at
 * once, with a log line that says why; of two set-ups of one session, the
 * first failing leaves the peer to the second. Real agents run on the software
 * RDMA device (support/soft_verbs.h), which executes the backend's code;
 * at the end the device holds no object.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/endian.h"
#include "support/soft_verbs.h"
#include "test_xfer_flood.h"
#include "xfer/sidechannel.h"
#include "xfer/verbs/verbs_ops.h"

/* The verbs side-channel frame type of SETUP (verbs_internal.h). */
#define SETUP_TYPE 64

typedef struct log_watch {
    atomic_bool saw_old_version;
} log_watch_t;

static void watch_log(void *user, kvrt_log_level_t level, const char *message)
{
    (void)level;
    log_watch_t *w = user;
    if (strstr(message, "set-up version 2") && strstr(message, "version 3 is required"))
        atomic_store(&w->saw_old_version, true);
}

static kvrt_xfer_agent_t *verbs_agent(kvrt_ctx_t *ctx, uint32_t max_pending)
{
    kvrt_verbs_tuning_t t = {.qps_per_peer = 2};
    kvrt_verbs_use(soft_verbs_ops(), &t);
    kvrt_xfer_agent_params_t p = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_RECONNECT |
                      (max_pending ? KVRT_XFER_AGENT_PARAM_HANDSHAKES : 0),
        .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_VERBS,
        .reconnect_initial_ms = 20, .reconnect_max_ms = 100, .reconnect_attempts = 1,
        .max_pending_handshakes = max_pending, .handshake_timeout_ms = 1000};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &p, &a));
    return a;
}

/* A key holder that dials `to`, completes the handshake as a verbs dialer
 * of `session` (its keys to *keys_out, if not NULL) and then sends nothing
 * more: its set-up stalls. Returns the socket. */
static int stalled_dialer_of(kvrt_xfer_agent_t *to, const uint8_t *session,
                             kvrt_xfer_sc_keys_t *keys_out)
{
    char text[96];
    cr_assert_eq(kvrt_xfer_agent_address(to, text, sizeof(text)), KVRT_OK);
    kvrt_xfer_addr_t addr;
    cr_assert_eq(kvrt_xfer_addr_parse(text, &addr), KVRT_OK);
    uint64_t deadline = kvrt_now_ns() + 3000000000ull;
    int fd = -1;
    cr_assert_eq(kvrt_xfer_sc_dial(&addr, deadline, &fd), KVRT_OK);
    kvrt_xfer_key_t key;
    cr_assert_eq(kvrt_xfer_key_derive(test_xfer_key, 32, &key), KVRT_OK);
    kvrt_xfer_hello_t hello = {.version = KVRT_XFER_SC_VERSION,
                               .backend = KVRT_XFER_BACKEND_VERBS,
                               .protection = KVRT_XFER_PROTECT_MAC};
    snprintf(hello.name, sizeof(hello.name), "staller");
    memcpy(hello.session, session, sizeof(hello.session));
    kvrt_status_t st = kvrt_xfer_sc_auth_client(fd, &key, &hello, NULL, NULL, keys_out,
                                                 deadline);
    cr_assert_eq(st, KVRT_OK, "the handshake of a key holder failed: %s", kvrt_status_str(st));
    return fd;
}

static int stalled_dialer(kvrt_xfer_agent_t *to)
{
    uint8_t session[KVRT_XFER_SESSION_BYTES];
    randombytes_buf(session, sizeof(session));
    return stalled_dialer_of(to, session, NULL);
}

/* Waits (bounded) until the ctl node `name` reads `want`; what it reads last. */
static uint64_t wait_stat(kvrt_ctx_t *ctx, const char *name, uint64_t want, uint32_t timeout_ms)
{
    uint64_t end = txu_now_ms() + timeout_ms, v;
    while ((v = txu_stat(ctx, name)) != want && txu_now_ms() < end) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    return v;
}

/* Whether fd is still open at the agent's end (nothing to read, no EOF). */
static bool still_open(int fd)
{
    uint8_t b;
    ssize_t n = recv(fd, &b, 1, MSG_DONTWAIT | MSG_PEEK);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

static void device_empty(void)
{
    kvrt_verbs_use(NULL, NULL);
    soft_verbs_stats_t s;
    soft_verbs_get_stats(&s);
    soft_verbs_stop();
    cr_assert_eq(s.live_qps + s.live_cqs + s.live_mrs + s.live_pds, 0,
                 "the device still holds %u QPs, %u CQs, %u MRs, %u PDs", s.live_qps,
                 s.live_cqs, s.live_mrs, s.live_pds);
}

Test(verbs_soft_accept, a_stalled_setup_delays_no_other_peer, .timeout = 60)
{
    cr_assert_eq(soft_verbs_start(NULL), 0);
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = verbs_agent(ctx, 0), *b = verbs_agent(ctx, 0);
    int staller = stalled_dialer(b);
    /* Its peer is made: the set-up is waiting for its SETUP (10 s). */
    cr_assert_eq(txf_stat_reaches(ctx, "xfer.1.peers", 1, 3000), 1);
    /* Before: the accept thread ran that set-up, so this handshake waited
     * behind it and the connect timed out. Now it takes milliseconds. */
    char text[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(b, text, sizeof(text)));
    kvrt_xfer_peer_t *peer = NULL;
    ASSERT_OK(ctx, kvrt_xfer_connect(a, text, 2000, &peer));
    cr_assert_eq(txu_stat(ctx, "xfer.1.peers"), 2);
    cr_assert(still_open(staller), "the stalled set-up was given up early");
    ASSERT_OK(ctx, kvrt_xfer_disconnect(peer));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    /* Destroy aborts the stalled set-up instead of waiting out its 10 s. */
    uint64_t t0 = txu_now_ms();
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(b));
    uint64_t took = txu_now_ms() - t0;
    cr_assert_lt(took, 5000, "destroy waited %llu ms for a stalled set-up",
                 (unsigned long long)took);
    cr_assert(txf_closed_by_agent(staller, 1000));
    close(staller);
    kvrt_ctx_destroy(ctx);
    device_empty();
}

Test(verbs_soft_accept, setups_beyond_the_cap_abort_the_oldest, .timeout = 60)
{
    cr_assert_eq(soft_verbs_start(NULL), 0);
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = verbs_agent(ctx, 0), *b = verbs_agent(ctx, 2);
    int s1 = stalled_dialer(b), s2 = stalled_dialer(b);
    /* Before: the second handshake waited behind the first set-up. */
    int s3 = stalled_dialer(b);
    /* Three set-ups with room for two: the oldest is closed, well before
     * its 10 s deadline. */
    cr_assert(txf_closed_by_agent(s1, 3000), "the oldest set-up was kept");
    cr_assert(still_open(s2) && still_open(s3));
    cr_assert_eq(wait_stat(ctx, "xfer.1.peers", 2, 3000), 2);
    /* A legitimate dialer displaces the next oldest and gets in. */
    char text[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(b, text, sizeof(text)));
    kvrt_xfer_peer_t *peer = NULL;
    ASSERT_OK(ctx, kvrt_xfer_connect(a, text, 2000, &peer));
    cr_assert(txf_closed_by_agent(s2, 3000));
    ASSERT_OK(ctx, kvrt_xfer_disconnect(peer));
    close(s1);
    close(s2);
    close(s3);
    /* The closed stallers' peers go with their set-ups. */
    cr_assert_eq(txu_stat_drained(ctx, "xfer.1.peers", 3000), 0);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(b));
    kvrt_ctx_destroy(ctx);
    device_empty();
}

/* Two set-ups of one session at once: a dialer that reconnects while the
 * listener still sets up its earlier attempt (whose end it has not seen
 * yet, as after a partition). The earlier one failing leaves the peer to
 * the later one; before, it dropped the peer, and the later set-up's
 * connection was closed as it came up. */
Test(verbs_soft_accept, a_failed_setup_leaves_the_peer_to_a_later_one_of_its_session,
     .timeout = 60)
{
    cr_assert_eq(soft_verbs_start(NULL), 0);
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *b = verbs_agent(ctx, 0);
    uint8_t session[KVRT_XFER_SESSION_BYTES];
    randombytes_buf(session, sizeof(session));
    int first = stalled_dialer_of(b, session, NULL);
    cr_assert_eq(txf_stat_reaches(ctx, "xfer.0.peers", 1, 3000), 1);
    kvrt_xfer_sc_keys_t keys;
    int later = stalled_dialer_of(b, session, &keys);
    /* The later one's SETUP (version 3, 2 QPs, its MAC) is answered: its
     * set-up is under way, on the peer of the first. */
    uint8_t setup[8 + KVRT_XFER_SC_MAC_BYTES], theirs[8 + KVRT_XFER_SC_MAC_BYTES];
    kvrt_store_le32(setup, 3);
    kvrt_store_le32(setup + 4, 2);
    kvrt_xfer_sc_frame_mac(keys.tx, "kvrt-verbs-setup", setup, 8, setup + 8);
    uint64_t deadline = kvrt_now_ns() + 3000000000ull;
    cr_assert_eq(kvrt_xfer_sc_send(later, SETUP_TYPE, setup, sizeof(setup), deadline), KVRT_OK);
    uint32_t got = 0;
    cr_assert_eq(kvrt_xfer_sc_recv(later, SETUP_TYPE, theirs, sizeof(theirs), &got, deadline),
                 KVRT_OK);
    cr_assert_eq(got, sizeof(theirs));
    cr_assert_eq(txu_stat(ctx, "xfer.0.peers"), 1);
    /* The first attempt ends: its set-up fails and is over once the agent
     * has let go of its socket. */
    shutdown(first, SHUT_WR);
    cr_assert(txf_closed_by_agent(first, 3000), "the first set-up did not end");
    cr_assert_eq(txu_stat(ctx, "xfer.0.peers"), 1,
                 "the peer went with the first set-up while the later one was under way");
    cr_assert(still_open(later), "the later set-up was given up");
    /* The later one failing too takes the peer with it. */
    close(later);
    cr_assert_eq(txu_stat_drained(ctx, "xfer.0.peers", 3000), 0);
    close(first);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(b));
    kvrt_ctx_destroy(ctx);
    device_empty();
}

Test(verbs_soft_accept, an_older_setup_version_is_refused, .timeout = 60)
{
    cr_assert_eq(soft_verbs_start(NULL), 0);
    static log_watch_t watch;
    kvrt_ctx_params_t cp = {.field_mask = KVRT_CTX_PARAM_LOG_FN | KVRT_CTX_PARAM_LOG_LEVEL,
                            .log_fn = watch_log, .log_user_data = &watch,
                            .log_level = KVRT_LOG_WARN};
    kvrt_ctx_t *ctx = NULL;
    cr_assert_eq(kvrt_ctx_create(&cp, &ctx), KVRT_OK);
    kvrt_xfer_agent_t *b = verbs_agent(ctx, 0);
    int fd = stalled_dialer(b);
    /* Version 2's SETUP: version and QP count, no MAC. Before, the agent
     * took it and waited 10 s for the QP exchange. */
    uint8_t setup[8];
    kvrt_store_le32(setup, 2);
    kvrt_store_le32(setup + 4, 2);
    cr_assert_eq(kvrt_xfer_sc_send(fd, SETUP_TYPE, setup, sizeof(setup),
                                   kvrt_now_ns() + 3000000000ull),
                 KVRT_OK);
    cr_assert(txf_closed_by_agent(fd, 3000), "a version 2 SETUP was not refused");
    cr_assert_eq(txu_stat_drained(ctx, "xfer.0.peers", 3000), 0);
    uint64_t end = txu_now_ms() + 3000;
    while (!atomic_load(&watch.saw_old_version) && txu_now_ms() < end) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    cr_assert(atomic_load(&watch.saw_old_version), "no log line named both versions");
    close(fd);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(b));
    kvrt_ctx_destroy(ctx);
    device_empty();
}
