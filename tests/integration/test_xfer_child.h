/*
 * test_xfer_child.h - a transfer agent in a child process, for the tests
 * that need a real second process (or a second network namespace). The
 * child registers REGION_BYTES of zeroed memory for remote read and write,
 * reports its address and region descriptor through a pipe, and serves
 * until killed (by pid) or until the test closes its hold pipe; it dies
 * with the test process whatever happens (PR_SET_PDEATHSIG).
 */
#ifndef KVRT_TEST_XFER_CHILD_H
#define KVRT_TEST_XFER_CHILD_H

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_xfer_util.h"

#define REGION_BYTES (64u << 20)

typedef struct child {
    pid_t pid;
    int report;  /* read end: address and descriptor */
    int hold;    /* write end: a byte starts the agent, closing it ends the child */
    char address[96];
    uint8_t desc[KVRT_XFER_DESCRIPTOR_MAX];
    size_t desc_len;
} child_t;

static inline void child_main(const char *netns, const char *listen, int report, int hold)
{
    /* Dies with the test, even stopped, whatever assertion ends it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (netns) {
        int fd = open(netns, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWNET) != 0)
            _exit(6);
        close(fd);
    }
    /* Wait for the go byte: a test can fork every child up front, before
     * it has threads of its own (fork from a threaded process and then
     * starting threads is not portable, and ThreadSanitizer refuses it). */
    char go;
    if (read(hold, &go, 1) != 1)
        _exit(0);
    /* Without a listen address, the address follows the go byte. */
    char given[96] = {0};
    if (!listen) {
        size_t got = 0;
        while (got < sizeof(given)) {
            ssize_t n = read(hold, given + got, sizeof(given) - got);
            if (n <= 0)
                _exit(7);
            got += (size_t)n;
        }
        given[sizeof(given) - 1] = '\0';
        listen = given;
    }
    kvrt_ctx_params_t cp = {.field_mask = KVRT_CTX_PARAM_LOG_LEVEL, .log_level = KVRT_LOG_ERROR};
    kvrt_ctx_t *ctx = NULL;
    if (kvrt_ctx_create(&cp, &ctx) != KVRT_OK)
        _exit(2);
    kvrt_xfer_agent_params_t p = {.field_mask = KVRT_XFER_AGENT_PARAM_BACKEND |
                                                KVRT_XFER_AGENT_PARAM_LISTEN,
                                  .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
                                  .backend = KVRT_XFER_BACKEND_TCP, .listen_address = listen};
    kvrt_xfer_agent_t *a = NULL;
    if (kvrt_xfer_agent_create(ctx, &p, &a) != KVRT_OK)
        _exit(3);
    uint8_t *mem = aligned_alloc(4096, REGION_BYTES);
    memset(mem, 0, REGION_BYTES);
    kvrt_xfer_register_params_t rp = {.field_mask = KVRT_XFER_REGISTER_PARAM_ACCESS,
                                      .address = mem, .length = REGION_BYTES,
                                      .access = KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE};
    kvrt_xfer_region_t *r = NULL;
    if (kvrt_xfer_register(a, &rp, &r) != KVRT_OK)
        _exit(4);
    char msg[96 + KVRT_XFER_DESCRIPTOR_MAX + 8] = {0};
    kvrt_xfer_agent_address(a, msg, 96);
    size_t len = 0;
    kvrt_xfer_region_descriptor(r, msg + 104, KVRT_XFER_DESCRIPTOR_MAX, &len);
    memcpy(msg + 96, &len, sizeof(len));
    if (write(report, msg, sizeof(msg)) != (ssize_t)sizeof(msg))
        _exit(5);
    char c;
    while (read(hold, &c, 1) > 0)
        ;
    kvrt_xfer_deregister(r);
    kvrt_xfer_agent_destroy(a);
    kvrt_ctx_destroy(ctx);
    _exit(0);
}

/* Forks a child that will serve on `listen` (inside the network namespace
 * file `netns` when not NULL) once child_go() is called. */
static inline child_t child_fork_in(const char *netns, const char *listen)
{
    int rep[2], hold[2];
    cr_assert_eq(pipe(rep), 0);
    cr_assert_eq(pipe(hold), 0);
    child_t c = {0};
    c.pid = fork();
    cr_assert_geq(c.pid, 0);
    if (c.pid == 0) {
        close(rep[0]);
        close(hold[1]);
        child_main(netns, listen, rep[1], hold[0]);
    }
    close(rep[1]);
    close(hold[0]);
    c.report = rep[0];
    c.hold = hold[1];
    return c;
}

/* Starts the agent of a forked child and waits for its report. `go` is
 * "g", or for a child forked without an address, "g" and 96 bytes of
 * address. */
static inline void child_go_at(child_t *c, const char *go)
{
    size_t len = go[1] ? 97 : 1;
    cr_assert_eq(write(c->hold, go, len), (ssize_t)len);
    char msg[96 + KVRT_XFER_DESCRIPTOR_MAX + 8];
    struct pollfd pfd = {.fd = c->report, .events = POLLIN};
    cr_assert_eq(poll(&pfd, 1, 10000), 1, "child did not report");
    cr_assert_eq(read(c->report, msg, sizeof(msg)), (ssize_t)sizeof(msg));
    memcpy(c->address, msg, 96);
    memcpy(&c->desc_len, msg + 96, sizeof(c->desc_len));
    cr_assert_leq(c->desc_len, KVRT_XFER_DESCRIPTOR_MAX);
    memcpy(c->desc, msg + 104, c->desc_len);
}

static inline void child_go(child_t *c) { child_go_at(c, "g"); }

static inline child_t child_start(const char *listen)
{
    child_t c = child_fork_in(NULL, listen);
    child_go(&c);
    return c;
}

static inline void child_kill(child_t *c)
{
    kill(c->pid, SIGKILL);
    waitpid(c->pid, NULL, 0);
    close(c->report);
    close(c->hold);
}

static inline void child_end(child_t *c)
{
    close(c->hold);
    int status = 0;
    cr_assert_eq(waitpid(c->pid, &status, 0), c->pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    close(c->report);
}

#endif /* KVRT_TEST_XFER_CHILD_H */
