/*
 * suite_xfer.c - the transfer engine over loopback TCP: throughput of
 * batches of 1 MiB .. 256 MiB made of 16 KiB .. 2 MiB blocks against iperf3
 * on loopback measured in the same run (target: >= 0.8 of it from 4 MiB
 * up), 64 KiB one-sided WRITE latency (p50, p99), and the time to register
 * 1 GiB. Both agents live in this process, as iperf3's client and server
 * share the machine. Without iperf3 the baseline is a plain loopback TCP
 * stream measured here, and the note says so.
 *
 * Sections: MAC frames and AEAD frames with the suite this CPU gets
 * (".aead"), then both with the portable ChaCha20/Poly1305 suite forced
 * (".chacha", ".chacha.aead"; 1-16 MiB batches) for comparison. Each
 * section measures its own baseline just before it and notes the load
 * average, and reports the median of its ratios from 4 MiB up
 * ("xfer.tcp<section>.write.median_ratio", target 0.8).
 *
 * Before them, the frame suites alone (xfer/tcp/frame_auth.h), one thread:
 * seal + open of 256 KiB and 16 KiB frames (GB/s of payload) and of an
 * empty frame such as an ACK (µs), for each mode and suite.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "kvrt/kvrt.h"
#include "xfer/tcp/frame_auth.h"
#include "xfer/tcp/wire.h"

#define CONNECTIONS 4

static const uint8_t bench_key[32] = "kvrt-bench-cluster-key-012345678";

/* ---- baselines ------------------------------------------------------------- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static pid_t spawn(char *const argv[], int out_fd)
{
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(out_fd >= 0 ? out_fd : null, 1);
        dup2(null, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* iperf3 on loopback with CONNECTIONS streams for `seconds`; bytes/s, or 0
 * when iperf3 is missing or fails. */
static double iperf3_loopback(int seconds)
{
    int port = free_port();
    if (port < 0)
        return 0;
    char port_text[16], secs[16], streams[16];
    snprintf(port_text, sizeof(port_text), "%d", port);
    snprintf(secs, sizeof(secs), "%d", seconds);
    snprintf(streams, sizeof(streams), "%d", CONNECTIONS);
    char *server[] = {"iperf3", "-s", "-1", "-p", port_text, NULL};
    pid_t spid = spawn(server, -1);
    if (spid < 0)
        return 0;
    double bps = 0;
    for (int attempt = 0; attempt < 20 && bps == 0; attempt++) {
        usleep(50 * 1000);
        int pipefd[2];
        if (pipe(pipefd) != 0)
            break;
        char *client[] = {"iperf3", "-c", "127.0.0.1", "-p", port_text, "-t", secs,
                          "-P", streams, "-J", NULL};
        pid_t cpid = spawn(client, pipefd[1]);
        close(pipefd[1]);
        static char json[1 << 20];
        size_t got = 0;
        ssize_t n;
        while (got + 1 < sizeof(json) && (n = read(pipefd[0], json + got, sizeof(json) - 1 - got)) > 0)
            got += (size_t)n;
        json[got] = '\0';
        close(pipefd[0]);
        int status = 0;
        if (cpid > 0)
            waitpid(cpid, &status, 0);
        if (cpid < 0 || !WIFEXITED(status) || WEXITSTATUS(status) == 127)
            break; /* no iperf3 */
        const char *sum = strstr(json, "\"sum_received\"");
        const char *bits = sum ? strstr(sum, "\"bits_per_second\"") : NULL;
        if (bits)
            bps = strtod(strchr(bits, ':') + 1, NULL) / 8.0;
    }
    kill(spid, SIGTERM);
    waitpid(spid, NULL, 0);
    return bps;
}

typedef struct sink {
    int fd;
    uint64_t bytes;
} sink_t;

static void *sink_main(void *arg)
{
    sink_t *s = arg;
    static char buf[1 << 20];
    ssize_t n;
    while ((n = recv(s->fd, buf, sizeof(buf), 0)) > 0)
        s->bytes += (uint64_t)n;
    return NULL;
}

/* A plain loopback TCP stream (one sender, one receiver), bytes/s. */
static double raw_loopback(double seconds)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (bind(l, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(l, 1) != 0 ||
        getsockname(l, (struct sockaddr *)&a, &len) != 0) {
        close(l);
        return 0;
    }
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(l);
        close(c);
        return 0;
    }
    sink_t s = {.fd = accept(l, NULL, NULL)};
    pthread_t t;
    pthread_create(&t, NULL, sink_main, &s);
    static char buf[1 << 20];
    uint64_t t0 = bench_now_ns(), sent = 0;
    while (bench_now_ns() - t0 < (uint64_t)(seconds * 1e9)) {
        ssize_t n = send(c, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        sent += (uint64_t)n;
    }
    shutdown(c, SHUT_WR);
    pthread_join(t, NULL);
    double dt = (double)(bench_now_ns() - t0) / 1e9;
    close(c);
    close(s.fd);
    close(l);
    return (double)s.bytes / dt;
}

/* ---- the engine ----------------------------------------------------------- */

typedef struct rig {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *a, *b;
    kvrt_xfer_peer_t *peer;
    uint8_t *src, *dst;
    uint64_t bytes;
    kvrt_xfer_region_t *local, *remote_region;
    kvrt_xfer_remote_t *remote;
} rig_t;

/* At least `bytes` of kvrt's own host memory (2 MiB aligned, prefaulted,
 * hugepages where reserved: what an engine's staging buffers get), through
 * the public API: a host pool of 1 MiB blocks, freed with the context. */
static uint8_t *host_buffer(kvrt_ctx_t *ctx, uint64_t bytes)
{
    /* fp16 (the default dtype): 2 x 256 tokens x 8 heads x 128 x 2 B = 1 MiB */
    kvrt_pool_params_t pp = {.layout = {.num_layers = 1, .num_kv_heads = 8, .head_dim = 128,
                                        .tokens_per_block = 256},
                             .num_blocks = (uint32_t)((bytes + (1u << 20) - 1) >> 20)};
    kvrt_pool_t *pool = NULL;
    kvrt_pool_info_t info;
    if (kvrt_pool_create(ctx, &pp, &pool) != KVRT_OK || kvrt_pool_info(pool, &info) != KVRT_OK ||
        (uint64_t)info.num_blocks * info.block_bytes < bytes)
        return NULL;
    return info.base;
}

static int rig_up(rig_t *r, uint64_t bytes, kvrt_xfer_protection_t protection)
{
    memset(r, 0, sizeof(*r));
    kvrt_ctx_params_t cp = {.field_mask = KVRT_CTX_PARAM_LOG_LEVEL, .log_level = KVRT_LOG_ERROR};
    if (kvrt_ctx_create(&cp, &r->ctx) != KVRT_OK)
        return -1;
    kvrt_xfer_agent_params_t p = {.field_mask = KVRT_XFER_AGENT_PARAM_BACKEND |
                                                KVRT_XFER_AGENT_PARAM_CONNECTIONS |
                                                KVRT_XFER_AGENT_PARAM_PROTECTION,
                                  .cluster_key = bench_key, .cluster_key_bytes = 32,
                                  .backend = KVRT_XFER_BACKEND_TCP,
                                  .connections_per_peer = CONNECTIONS,
                                  .frame_protection = protection};
    char addr[96];
    r->bytes = bytes;
    r->src = host_buffer(r->ctx, bytes);
    r->dst = host_buffer(r->ctx, bytes);
    if (!r->src || !r->dst || kvrt_xfer_agent_create(r->ctx, &p, &r->a) != KVRT_OK ||
        kvrt_xfer_agent_create(r->ctx, &p, &r->b) != KVRT_OK ||
        kvrt_xfer_agent_address(r->b, addr, sizeof(addr)) != KVRT_OK ||
        kvrt_xfer_connect(r->a, addr, 5000, &r->peer) != KVRT_OK)
        return -1;
    memset(r->src, 0x5a, bytes);
    memset(r->dst, 0, bytes);
    kvrt_xfer_register_params_t rp = {.address = r->src, .length = bytes};
    if (kvrt_xfer_register(r->a, &rp, &r->local) != KVRT_OK)
        return -1;
    rp = (kvrt_xfer_register_params_t){.field_mask = KVRT_XFER_REGISTER_PARAM_ACCESS,
                                       .address = r->dst, .length = bytes,
                                       .access = KVRT_XFER_REMOTE_WRITE | KVRT_XFER_REMOTE_READ};
    uint8_t desc[KVRT_XFER_DESCRIPTOR_MAX];
    size_t len = 0;
    if (kvrt_xfer_register(r->b, &rp, &r->remote_region) != KVRT_OK ||
        kvrt_xfer_region_descriptor(r->remote_region, desc, sizeof(desc), &len) != KVRT_OK ||
        kvrt_xfer_import(r->peer, desc, len, &r->remote) != KVRT_OK)
        return -1;
    return 0;
}

static void rig_down(rig_t *r)
{
    kvrt_xfer_agent_destroy(r->a);
    kvrt_xfer_agent_destroy(r->b);
    kvrt_ctx_destroy(r->ctx); /* frees the host memory too */
}

/* One batch of `batch` bytes in `block`-byte WRITEs, in a shuffled order so
 * that nothing coalesces; seconds, or -1 on failure. */
static double one_batch(rig_t *r, kvrt_xfer_op_t *ops, uint64_t batch, uint64_t block)
{
    uint32_t n = (uint32_t)(batch / block);
    uint64_t t0 = bench_now_ns();
    kvrt_xfer_request_t *req = NULL;
    if (kvrt_xfer_post(r->peer, ops, n, NULL, &req) != KVRT_OK)
        return -1;
    kvrt_status_t st = kvrt_xfer_request_wait(req, 60000);
    double dt = (double)(bench_now_ns() - t0) / 1e9;
    kvrt_xfer_request_release(req);
    return st == KVRT_OK ? dt : -1;
}

static int throughput(rig_t *r, const bench_options_t *o, int nbatches, double baseline,
                      const char *base_name, const char *base_note, const char *mode)
{
    static const uint64_t mib = 1u << 20;
    static const uint64_t batches[] = {1, 4, 16, 64, 256};
    static const uint64_t blocks[] = {16u << 10, 256u << 10, 2u << 20};
    double ratios[16];
    int nratios = 0;
    kvrt_xfer_op_t *ops = malloc((256 * mib / (16u << 10)) * sizeof(*ops));
    if (!ops)
        return -1;
    uint64_t seed = 1;
    for (int bi = 0; bi < nbatches; bi++)
        for (size_t ki = 0; ki < sizeof(blocks) / sizeof(blocks[0]); ki++) {
            uint64_t batch = batches[bi] * mib, block = blocks[ki];
            if (block > batch)
                continue;
            uint32_t n = (uint32_t)(batch / block);
            for (uint32_t i = 0; i < n; i++)
                ops[i] = (kvrt_xfer_op_t){.opcode = KVRT_XFER_WRITE, .local = r->local,
                                          .local_offset = (uint64_t)i * block,
                                          .remote = r->remote, .length = block};
            /* Destinations shuffled (Fisher-Yates), so that runs almost
             * never coalesce: every block is its own operation. */
            for (uint32_t i = 0; i < n; i++)
                ops[i].remote_offset = (uint64_t)i * block;
            for (uint32_t i = n; i > 1; i--) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                uint32_t j = (uint32_t)((seed >> 33) % i);
                uint64_t t = ops[i - 1].remote_offset;
                ops[i - 1].remote_offset = ops[j].remote_offset;
                ops[j].remote_offset = t;
            }
            /* Enough repetitions for a stable median, capped by bytes. */
            int reps = o->repeats;
            uint64_t cap = (o->quick ? 256 : 1024) * mib;
            if ((uint64_t)reps * batch > cap)
                reps = (int)(cap / batch) < 3 ? 3 : (int)(cap / batch);
            double samples[1000];
            one_batch(r, ops, batch, block); /* warm-up */
            for (int i = 0; i < reps; i++) {
                double dt = one_batch(r, ops, batch, block);
                if (dt <= 0) {
                    free(ops);
                    return -1;
                }
                samples[i] = (double)batch / dt / 1e9;
            }
            char name[96], note[160];
            snprintf(name, sizeof(name), "xfer.tcp%s.write.batch%llumb.block%llukb", mode,
                     (unsigned long long)batches[bi], (unsigned long long)(block >> 10));
            double value = bench_median(samples, reps);
            snprintf(note, sizeof(note), "ratio %.2f; %s", baseline > 0 ? value / baseline : 0,
                     base_note);
            bench_figure_t f = {.name = name, .unit = "GB/s", .value = value,
                                .baseline_name = base_name, .baseline_value = baseline,
                                .target = batches[bi] >= 4 ? 0.8 * baseline : 0,
                                .note = note};
            bench_report(&f);
            if (batches[bi] >= 4 && baseline > 0)
                ratios[nratios++] = value / baseline;
        }
    free(ops);
    if (nratios) {
        char name[96];
        snprintf(name, sizeof(name), "xfer.tcp%s.write.median_ratio", mode);
        bench_report(&(bench_figure_t){.name = name, .unit = "x", .value =
                                           bench_median(ratios, nratios),
                                       .target = 0.8, .note = base_note});
    }
    return 0;
}

static int latency(rig_t *r, const bench_options_t *o)
{
    int n = o->quick ? 300 : 2000;
    double *samples = malloc((size_t)n * sizeof(double));
    if (!samples)
        return -1;
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = r->local, .remote = r->remote,
                         .length = 65536};
    for (int i = -50; i < n; i++) {
        uint64_t t0 = bench_now_ns();
        kvrt_xfer_request_t *req = NULL;
        if (kvrt_xfer_post(r->peer, &op, 1, NULL, &req) != KVRT_OK ||
            kvrt_xfer_request_wait(req, 10000) != KVRT_OK) {
            free(samples);
            return -1;
        }
        kvrt_xfer_request_release(req);
        if (i >= 0)
            samples[i] = (double)(bench_now_ns() - t0) / 1e3;
    }
    double p50 = bench_median(samples, n); /* sorts */
    double p99 = samples[(int)(0.99 * (n - 1))];
    bench_report(&(bench_figure_t){.name = "xfer.tcp.write64k.latency.p50", .unit = "us",
                                   .value = p50, .lower_is_better = true,
                                   .note = "post + completion, loopback, agents in one process"});
    bench_report(&(bench_figure_t){.name = "xfer.tcp.write64k.latency.p99", .unit = "us",
                                   .value = p99, .lower_is_better = true});
    free(samples);
    return 0;
}

static int registration(const bench_options_t *o)
{
    kvrt_ctx_t *ctx = NULL;
    kvrt_ctx_params_t cp = {.field_mask = KVRT_CTX_PARAM_LOG_LEVEL, .log_level = KVRT_LOG_ERROR};
    if (kvrt_ctx_create(&cp, &ctx) != KVRT_OK)
        return -1;
    kvrt_xfer_agent_params_t p = {.field_mask = KVRT_XFER_AGENT_PARAM_BACKEND,
                                  .cluster_key = bench_key, .cluster_key_bytes = 32,
                                  .backend = KVRT_XFER_BACKEND_TCP};
    kvrt_xfer_agent_t *a = NULL;
    uint64_t bytes = 1ull << 30;
    uint8_t *mem = host_buffer(ctx, bytes);
    if (!mem || kvrt_xfer_agent_create(ctx, &p, &a) != KVRT_OK) {
        kvrt_ctx_destroy(ctx);
        return -1;
    }
    double samples[64];
    int reps = o->repeats > 64 ? 64 : o->repeats;
    for (int i = 0; i < reps; i++) {
        kvrt_xfer_register_params_t rp = {.field_mask = KVRT_XFER_REGISTER_PARAM_ACCESS,
                                          .address = mem, .length = bytes,
                                          .access = KVRT_XFER_REMOTE_WRITE};
        kvrt_xfer_region_t *r = NULL;
        uint64_t t0 = bench_now_ns();
        kvrt_status_t st = kvrt_xfer_register(a, &rp, &r);
        samples[i] = (double)(bench_now_ns() - t0) / 1e3;
        if (st != KVRT_OK || kvrt_xfer_deregister(r) != KVRT_OK) {
            kvrt_ctx_destroy(ctx);
            return -1;
        }
    }
    bench_report(&(bench_figure_t){
        .name = "xfer.tcp.register.1gb", .unit = "us", .value = bench_median(samples, reps),
        .lower_is_better = true,
        .note = "TCP backend: bookkeeping only (host memory is already prefaulted by the "
                "arena); a verbs backend pins and registers the MR here"});
    kvrt_ctx_destroy(ctx);
    return 0;
}

/* ---- frame suites ------------------------------------------------------------ */

/* Seals and opens `length`-byte frames for about `seconds`; seconds per
 * frame, or -1 when a frame fails to open (a broken suite). */
static double seal_open(uint32_t word, uint8_t *payload, uint64_t length, double seconds)
{
    static const uint8_t key[KVRT_XFER_FRAME_KEY_BYTES] = "kvrt-bench-frame-key-0123456789";
    kvrt_xfer_frame_key_t tx, rx;
    if (!kvrt_xfer_frame_key_init(&tx, word, key))
        return -1;
    if (!kvrt_xfer_frame_key_init(&rx, word, key)) {
        kvrt_xfer_frame_key_clear(&tx);
        return -1;
    }
    uint8_t hdr[KVRT_XFER_WIRE_HEADER_BYTES], tag[KVRT_XFER_FRAME_TAG_BYTES];
    kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_WRITE, .region = 1, .length = length};
    kvrt_xfer_wire_encode(&h, hdr);
    uint64_t frames = 0, t0 = bench_now_ns(), t = t0;
    bool ok = true;
    while (ok && (double)(t - t0) < seconds * 1e9) {
        for (int i = 0; i < 16 && ok; i++, frames++) {
            kvrt_xfer_frame_seal(&tx, word, hdr, payload, payload, length, tag);
            ok = kvrt_xfer_frame_open(&rx, word, hdr, payload, length, tag);
        }
        t = bench_now_ns();
    }
    kvrt_xfer_frame_key_clear(&tx);
    kvrt_xfer_frame_key_clear(&rx);
    return ok ? (double)(t - t0) / 1e9 / (double)frames : -1;
}

static int frame_suites(const bench_options_t *o)
{
    static const struct {
        const char *name;
        uint32_t word;
    } suites[] = {
        {"mac.aes", KVRT_XFER_PROTECT_MAC | KVRT_XFER_SUITE_AES << KVRT_XFER_FRAME_SUITE_SHIFT},
        {"mac.chacha", KVRT_XFER_PROTECT_MAC},
        {"aead.aes", KVRT_XFER_PROTECT_AEAD | KVRT_XFER_SUITE_AES << KVRT_XFER_FRAME_SUITE_SHIFT},
        {"aead.chacha", KVRT_XFER_PROTECT_AEAD},
    };
    static const uint64_t lengths[] = {256u << 10, 16u << 10, 0};
    uint8_t *payload = malloc(256u << 10);
    if (!payload)
        return -1;
    memset(payload, 0x5a, 256u << 10);
    double seconds = o->quick ? 0.1 : 0.4;
    for (size_t s = 0; s < sizeof(suites) / sizeof(suites[0]); s++)
        for (size_t l = 0; l < sizeof(lengths) / sizeof(lengths[0]); l++) {
            double per = seal_open(suites[s].word, payload, lengths[l], seconds);
            if (per <= 0) {
                free(payload);
                return -1;
            }
            char name[96];
            if (lengths[l]) {
                snprintf(name, sizeof(name), "xfer.frame.%s.seal_open.%llukb", suites[s].name,
                         (unsigned long long)(lengths[l] >> 10));
                bench_report(&(bench_figure_t){
                    .name = name, .unit = "GB/s", .value = (double)lengths[l] / per / 1e9,
                    .note = "one thread; each payload byte sealed once and opened once"});
            } else {
                snprintf(name, sizeof(name), "xfer.frame.%s.seal_open.empty", suites[s].name);
                bench_report(&(bench_figure_t){.name = name, .unit = "us", .value = per * 1e6,
                                               .lower_is_better = true,
                                               .note = "a header-only frame (an ACK)"});
            }
        }
    free(payload);
    return 0;
}

/* The baseline, measured now: bytes/s into *base, its name and a note
 * with the load average. */
static void baseline_now(const bench_options_t *o, double *base, const char **name,
                         char *note, size_t note_bytes)
{
    double load[1] = {0};
    *base = iperf3_loopback(o->quick ? 1 : 2);
    *name = "iperf3.loopback.P4";
    const char *what = "iperf3 -P 4 on loopback, same run, just before";
    if (*base <= 0) {
        *base = raw_loopback(o->quick ? 0.5 : 1.5);
        *name = "raw_tcp.loopback";
        what = "iperf3 not found: one plain loopback TCP stream, same run";
    }
    *base /= 1e9;
    if (getloadavg(load, 1) != 1)
        load[0] = -1;
    snprintf(note, note_bytes, "baseline: %s (%.2f GB/s); load average %.2f", what, *base,
             load[0]);
}

static int run_xfer(const bench_options_t *o)
{
    static const struct {
        const char *mode;
        kvrt_xfer_protection_t protection;
        const char *suite; /* KVRT_XFER_FRAME_SUITE while connecting; NULL: the CPU's */
        bool full;         /* every batch size (not only 1-16 MiB) */
    } sections[] = {
        {"", KVRT_XFER_PROTECT_MAC, NULL, true},
        {".aead", KVRT_XFER_PROTECT_AEAD, NULL, true},
        {".chacha", KVRT_XFER_PROTECT_MAC, "chacha", false},
        {".chacha.aead", KVRT_XFER_PROTECT_AEAD, "chacha", false},
    };
    int rc = frame_suites(o);
    for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]) && rc == 0; i++) {
        double base;
        const char *base_name;
        char base_note[192];
        baseline_now(o, &base, &base_name, base_note, sizeof(base_note));
        /* Nothing else runs in this process now: the variable is read by
         * the one dial below (and by no reconnection: none happens). */
        if (sections[i].suite)
            setenv("KVRT_XFER_FRAME_SUITE", sections[i].suite, 1);
        rig_t r;
        rc = rig_up(&r, 256u << 20, sections[i].protection);
        unsetenv("KVRT_XFER_FRAME_SUITE");
        if (rc != 0) {
            fprintf(stderr, "suite_xfer: setting up two agents (%s) failed\n",
                    sections[i].mode[0] ? sections[i].mode : "mac");
            return -1;
        }
        int nbatches = sections[i].full && !o->quick ? 5 : 3;
        rc = throughput(&r, o, nbatches, base, base_name, base_note, sections[i].mode);
        if (rc == 0 && i == 0)
            rc = latency(&r, o);
        rig_down(&r);
    }
    if (rc == 0)
        rc = registration(o);
    return rc;
}

KVRT_BENCH_SUITE(xfer, "transfer engine: loopback TCP throughput vs iperf3, 64 KiB latency, "
                       "registration",
                 run_xfer, true)
