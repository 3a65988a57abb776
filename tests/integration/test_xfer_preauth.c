/*
 * test_xfer_preauth.c - connections that never authenticate cannot keep a
 * listening agent from serving others. Handshakes run concurrently: idle
 * sockets, a slowloris peer (one byte every 100 ms) and a burst of
 * hundreds of connections do not stop a legitimate kvrt_xfer_connect
 * (which, serialised behind them at 2 s each, used to time out); each such
 * connection is closed at the pre-authentication deadline; at most
 * max_pending_handshakes wait, the oldest closed first; and a dialer whose
 * listener restarts behind a queue of silent sockets reconnects.
 *
 * The bounds are generous (seconds where a connect takes milliseconds), so
 * a loaded machine does not fail them; the behaviour they rule out took
 * tens of seconds.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test_xfer_util.h"
#include "xfer/sidechannel.h"

/* Generous: a connect here takes milliseconds. */
#define CONNECT_MS 5000

static kvrt_xfer_agent_t *agent_handshakes(kvrt_ctx_t *ctx, uint32_t max_pending,
                                           uint32_t timeout_ms, const char *listen)
{
    kvrt_xfer_agent_params_t p = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_HANDSHAKES |
                      (listen ? KVRT_XFER_AGENT_PARAM_LISTEN : 0),
        .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_TCP, .listen_address = listen,
        .max_pending_handshakes = max_pending, .handshake_timeout_ms = timeout_ms};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &p, &a));
    return a;
}

/* An agent with the default handshake limits. */
static kvrt_xfer_agent_t *agent_default(kvrt_ctx_t *ctx)
{
    kvrt_xfer_agent_params_t p = {.field_mask = KVRT_XFER_AGENT_PARAM_BACKEND,
                                  .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
                                  .backend = KVRT_XFER_BACKEND_TCP};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &p, &a));
    return a;
}

static kvrt_xfer_addr_t agent_addr(kvrt_ctx_t *ctx, kvrt_xfer_agent_t *a, char *text)
{
    ASSERT_OK(ctx, kvrt_xfer_agent_address(a, text, 96));
    kvrt_xfer_addr_t addr;
    cr_assert_eq(kvrt_xfer_addr_parse(text, &addr), KVRT_OK);
    return addr;
}

/* A connected socket that sends nothing. */
static int open_silent(const kvrt_xfer_addr_t *addr)
{
    int fd = -1;
    cr_assert_eq(kvrt_xfer_sc_dial(addr, kvrt_now_ns() + 3000000000ull, &fd), KVRT_OK);
    return fd;
}

/* Whether the agent closed fd, waiting at most wait_ms. Before
 * authentication the agent sends nothing, so readable means closed. */
static bool closed_within(int fd, int wait_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, wait_ms) <= 0)
        return false;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
    return n == 0 || (n < 0 && errno != EAGAIN);
}

/* Waits (bounded) until ctl node `name` reads at least `want`. */
static uint64_t stat_reaches(kvrt_ctx_t *ctx, const char *name, uint64_t want, uint32_t ms)
{
    uint64_t end = txu_now_ms() + ms, v;
    while ((v = txu_stat(ctx, name)) < want && txu_now_ms() < end)
        usleep(5000);
    return v;
}

/* Connects a fresh client agent to `to`, expecting success within
 * CONNECT_MS; returns how long it took. */
static uint64_t connect_ms(kvrt_ctx_t *ctx, kvrt_xfer_agent_t *client, const char *to,
                           kvrt_xfer_peer_t **peer_out)
{
    uint64_t t0 = txu_now_ms();
    ASSERT_OK(ctx, kvrt_xfer_connect(client, to, CONNECT_MS, peer_out));
    uint64_t took = txu_now_ms() - t0;
    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    ASSERT_OK(ctx, kvrt_xfer_peer_info(*peer_out, &info));
    cr_assert_eq(info.state, KVRT_XFER_PEER_CONNECTED);
    return took;
}

/* A listening agent with the default limits and a client agent. */
typedef struct fixture {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *server, *client;
    char text[96]; /* the server's address */
    kvrt_xfer_addr_t addr;
    kvrt_xfer_peer_t *peer;
} fixture_t;

static void fixture_up(fixture_t *f)
{
    memset(f, 0, sizeof(*f));
    f->ctx = txu_ctx();
    f->server = agent_default(f->ctx);
    f->client = txu_agent(f->ctx, 3000);
    f->addr = agent_addr(f->ctx, f->server, f->text);
}

static void fixture_down(fixture_t *f)
{
    ASSERT_OK(f->ctx, kvrt_xfer_disconnect(f->peer));
    ASSERT_OK(f->ctx, kvrt_xfer_agent_destroy(f->client));
    ASSERT_OK(f->ctx, kvrt_xfer_agent_destroy(f->server));
    kvrt_ctx_destroy(f->ctx);
}

Test(xfer_preauth, idle_connections_do_not_delay_a_connect, .timeout = 60)
{
    fixture_t f;
    fixture_up(&f);
    kvrt_ctx_t *ctx = f.ctx;
    enum { IDLE = 16 };
    int idle[IDLE];
    for (int i = 0; i < IDLE; i++)
        idle[i] = open_silent(&f.addr);
    cr_assert_eq(stat_reaches(ctx, "xfer.0.handshakes_pending", IDLE, 5000), IDLE);
    uint64_t took = connect_ms(ctx, f.client, f.text, &f.peer);
    cr_log_info("connect behind %d idle sockets: %llu ms", IDLE, (unsigned long long)took);
    /* Each idle socket is closed at the default deadline (1 s). */
    uint64_t end = txu_now_ms() + 10000;
    for (int i = 0; i < IDLE; i++) {
        int left = (int)(end > txu_now_ms() ? end - txu_now_ms() : 0);
        cr_assert(closed_within(idle[i], left), "idle socket %d still open after 10 s", i);
        close(idle[i]);
    }
    cr_assert_geq(stat_reaches(ctx, "xfer.0.handshakes_dropped", IDLE, 5000), IDLE);
    cr_assert_eq(txu_stat(ctx, "xfer.0.handshakes_pending"), 0);
    fixture_down(&f);
}

/* A peer that sends a well-formed HELLO frame one byte every 100 ms on
 * each of its sockets: it would take 15 s to finish. */
typedef struct slowloris {
    kvrt_xfer_addr_t addr;
    int fds[8];
    uint32_t sent[8];
    bool closed[8];
    atomic_bool stop;
} slowloris_t;

static void *slowloris_main(void *arg)
{
    slowloris_t *s = arg;
    uint8_t frame[KVRT_XFER_SC_HEADER_BYTES + KVRT_XFER_SC_HELLO_BYTES] = {0};
    kvrt_xfer_sc_header_encode(frame, KVRT_XFER_SC_HELLO, KVRT_XFER_SC_HELLO_BYTES);
    uint64_t end = txu_now_ms() + 8000;
    for (int round = 0; !atomic_load(&s->stop) && txu_now_ms() < end; round++) {
        bool open = false;
        for (int i = 0; i < 8; i++) {
            if (s->closed[i])
                continue;
            if (s->sent[i] < sizeof(frame) &&
                send(s->fds[i], frame + s->sent[i], 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1)
                s->sent[i]++;
            s->closed[i] = closed_within(s->fds[i], 0);
            open = open || !s->closed[i];
        }
        if (!open)
            break;
        usleep(100000);
    }
    return NULL;
}

Test(xfer_preauth, slowloris_does_not_delay_others, .timeout = 60)
{
    fixture_t f;
    fixture_up(&f);
    slowloris_t s = {.addr = f.addr};
    for (int i = 0; i < 8; i++)
        s.fds[i] = open_silent(&s.addr);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, slowloris_main, &s), 0);
    usleep(300000); /* the slowloris is under way */
    uint64_t took = connect_ms(f.ctx, f.client, f.text, &f.peer);
    cr_log_info("connect beside 8 slowloris sockets: %llu ms", (unsigned long long)took);
    pthread_join(t, NULL);
    /* The deadline counts from accept: trickling bytes does not extend
     * it, so each socket was closed long before its HELLO was complete. */
    for (int i = 0; i < 8; i++) {
        cr_assert(s.closed[i], "slowloris socket %d still open after 8 s", i);
        cr_assert_lt(s.sent[i], KVRT_XFER_SC_HEADER_BYTES + KVRT_XFER_SC_HELLO_BYTES);
        close(s.fds[i]);
    }
    fixture_down(&f);
}

Test(xfer_preauth, a_burst_of_connections_does_not_block_a_connect, .timeout = 90)
{
    fixture_t f;
    fixture_up(&f);
    kvrt_ctx_t *ctx = f.ctx;
    const kvrt_xfer_addr_t addr = f.addr;
    enum { BURST = 400 };
    int *fds = calloc(BURST, sizeof(int));
    cr_assert_not_null(fds);
    /* Non-blocking connects, not waited for: as fast as a client can. */
    for (int i = 0; i < BURST; i++) {
        fds[i] = socket(addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        cr_assert_geq(fds[i], 0);
        int rc = connect(fds[i], (const struct sockaddr *)&addr.ss, addr.len);
        cr_assert(rc == 0 || errno == EINPROGRESS, "connect: %s", strerror(errno));
    }
    uint64_t took = connect_ms(ctx, f.client, f.text, &f.peer);
    cr_log_info("connect after a burst of %d: %llu ms", BURST, (unsigned long long)took);
    /* Never more than the default 256 wait; every one of the burst is
     * dropped, displaced or at the deadline. */
    cr_assert_leq(txu_stat(ctx, "xfer.0.handshakes_pending"), 256);
    cr_assert_geq(stat_reaches(ctx, "xfer.0.handshakes_dropped", BURST, 15000), BURST);
    cr_assert_eq(txu_stat(ctx, "xfer.0.handshakes_pending"), 0);
    for (int i = 0; i < BURST; i++)
        close(fds[i]);
    free(fds);
    fixture_down(&f);
}

Test(xfer_preauth, a_full_table_drops_the_oldest_pending, .timeout = 60)
{
    kvrt_ctx_t *ctx = txu_ctx();
    /* A deadline far beyond the test: only displacement closes sockets. */
    kvrt_xfer_agent_t *server = agent_handshakes(ctx, 4, 60000, NULL);
    char text[96];
    kvrt_xfer_addr_t addr = agent_addr(ctx, server, text);
    int s[6];
    for (int i = 0; i < 4; i++)
        s[i] = open_silent(&addr);
    cr_assert_eq(stat_reaches(ctx, "xfer.0.handshakes_pending", 4, 5000), 4);
    /* Each newcomer closes the oldest still waiting. */
    s[4] = open_silent(&addr);
    cr_assert(closed_within(s[0], 5000), "the oldest pending socket was not dropped");
    s[5] = open_silent(&addr);
    cr_assert(closed_within(s[1], 5000), "the second oldest pending socket was not dropped");
    for (int i = 2; i < 6; i++)
        cr_assert(!closed_within(s[i], 100), "socket %d dropped out of order", i);
    cr_assert_eq(txu_stat(ctx, "xfer.0.handshakes_pending"), 4);
    cr_assert_eq(txu_stat(ctx, "xfer.0.handshakes_dropped"), 2);

    /* A legitimate dialer still gets in: its sockets are the newest. */
    kvrt_xfer_agent_t *client = txu_agent(ctx, 3000);
    kvrt_xfer_peer_t *peer = NULL;
    connect_ms(ctx, client, text, &peer);
    ASSERT_OK(ctx, kvrt_xfer_disconnect(peer));
    for (int i = 0; i < 6; i++)
        close(s[i]);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(client));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(server));

    /* The limits are validated. */
    kvrt_xfer_agent_params_t bad = {.field_mask = KVRT_XFER_AGENT_PARAM_HANDSHAKES,
                                    .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
                                    .max_pending_handshakes = 0, .handshake_timeout_ms = 1000};
    kvrt_xfer_agent_t *none = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_agent_create(ctx, &bad, &none));
    bad.max_pending_handshakes = 16;
    bad.handshake_timeout_ms = 5;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_agent_create(ctx, &bad, &none));
    bad.handshake_timeout_ms = 60001;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_agent_create(ctx, &bad, &none));
    cr_assert_null(none);
    kvrt_ctx_destroy(ctx);
}

/* Keeps four silent connections open to an address at all times, dialing
 * again whenever the listener is down or closed one. */
typedef struct squatter {
    kvrt_xfer_addr_t addr;
    atomic_bool stop;
    atomic_uint opened;
} squatter_t;

static void *squatter_main(void *arg)
{
    squatter_t *q = arg;
    int fds[4] = {-1, -1, -1, -1};
    uint64_t end = txu_now_ms() + 30000;
    while (!atomic_load(&q->stop) && txu_now_ms() < end) {
        for (int i = 0; i < 4; i++) {
            if (fds[i] >= 0 && closed_within(fds[i], 0)) {
                close(fds[i]);
                fds[i] = -1;
            }
            if (fds[i] < 0 &&
                kvrt_xfer_sc_dial(&q->addr, kvrt_now_ns() + 100000000ull, &fds[i]) == KVRT_OK)
                atomic_fetch_add(&q->opened, 1);
        }
        usleep(5000);
    }
    for (int i = 0; i < 4; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return NULL;
}

Test(xfer_preauth, a_dialer_reconnects_past_silent_sockets, .timeout = 90)
{
    fixture_t f;
    fixture_up(&f);
    kvrt_ctx_t *ctx = f.ctx;
    squatter_t q = {.addr = f.addr};
    connect_ms(ctx, f.client, f.text, &f.peer);

    /* The listener restarts on the same address; the squatter dials it
     * throughout, so its four silent sockets are there from the start. */
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, squatter_main, &q), 0);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(f.server));
    usleep(100000);
    f.server = agent_handshakes(ctx, 256, 1000, f.text);

    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    uint64_t end = txu_now_ms() + 15000;
    do {
        usleep(10000);
        ASSERT_OK(ctx, kvrt_xfer_peer_info(f.peer, &info));
    } while (!(info.state == KVRT_XFER_PEER_CONNECTED && info.reconnects >= 1) &&
             info.state != KVRT_XFER_PEER_FAILED && txu_now_ms() < end);
    unsigned opened = atomic_load(&q.opened);
    atomic_store(&q.stop, true);
    pthread_join(t, NULL);
    cr_assert_geq(opened, 4, "the squatter never got its sockets in");
    cr_assert_eq(info.state, KVRT_XFER_PEER_CONNECTED, "peer state %d after 15 s (%s)",
                 (int)info.state, kvrt_status_str(info.last_error));
    cr_assert_geq(info.reconnects, 1);
    fixture_down(&f);
}
