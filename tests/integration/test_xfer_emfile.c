/*
 * test_xfer_emfile.c - an agent out of file descriptors. A connection
 * waits in the listen queue that accept4() cannot take (EMFILE): the
 * accept thread must back off instead of spinning on a listener that
 * stays readable, and accept again once descriptors are free.
 *
 * Runs in a child process, so that lowering RLIMIT_NOFILE touches nothing
 * else; CPU time is the process's own (getrusage).
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_xfer_util.h"
#include "xfer/sidechannel.h"

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Exit codes: 0 passed, 2 setup failed, 3 spun, 4 did not recover. */
static int child(void)
{
    kvrt_ctx_t *ctx = NULL;
    kvrt_ctx_params_t cp = {.field_mask = KVRT_CTX_PARAM_LOG_LEVEL, .log_level = KVRT_LOG_ERROR};
    if (kvrt_ctx_create(&cp, &ctx) != KVRT_OK)
        return 2;
    kvrt_xfer_agent_params_t p = {.field_mask = KVRT_XFER_AGENT_PARAM_BACKEND,
                                  .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
                                  .backend = KVRT_XFER_BACKEND_TCP};
    kvrt_xfer_agent_t *a = NULL;
    char text[96];
    kvrt_xfer_addr_t addr;
    if (kvrt_xfer_agent_create(ctx, &p, &a) != KVRT_OK ||
        kvrt_xfer_agent_address(a, text, sizeof(text)) != KVRT_OK ||
        kvrt_xfer_addr_parse(text, &addr) != KVRT_OK)
        return 2;
    /* Use up every descriptor but the one the dialing socket takes. */
    int spare = open("/dev/null", O_RDONLY);
    int hog[4096], nhog = 0;
    while (nhog < 4096 && (hog[nhog] = open("/dev/null", O_RDONLY)) >= 0)
        nhog++;
    struct rlimit lim;
    getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = (rlim_t)(hog[nhog - 1] + 1);
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0)
        return 2;
    close(spare);
    int fd = -1;
    if (kvrt_xfer_sc_dial(&addr, kvrt_now_ns() + 2000000000ull, &fd) != KVRT_OK)
        return 2;
    /* The connection is queued; the agent cannot take it. */
    double cpu0 = cpu_seconds();
    usleep(2000000);
    double spent = cpu_seconds() - cpu0;
    /* Spinning costs a core (about 1 s in 2 s, less on a loaded host);
     * backing off costs a few milliseconds. */
    if (spent > 0.1) {
        fprintf(stderr, "%.3f s of CPU in 2 s of EMFILE\n", spent);
        return 3;
    }
    /* Descriptors come back: the agent accepts and answers the handshake. */
    for (int i = 0; i < nhog; i++)
        close(hog[i]);
    kvrt_xfer_key_t key;
    kvrt_xfer_key_derive(test_xfer_key, 32, &key);
    kvrt_xfer_hello_t hello = {.version = KVRT_XFER_SC_VERSION,
                               .backend = KVRT_XFER_BACKEND_TCP, .name = "late"};
    if (kvrt_xfer_sc_auth_client(fd, &key, &hello, NULL, NULL, NULL,
                                 kvrt_now_ns() + 3000000000ull) != KVRT_OK)
        return 4;
    close(fd);
    kvrt_xfer_agent_destroy(a);
    kvrt_ctx_destroy(ctx);
    return 0;
}

Test(xfer_emfile, accept_backs_off_when_out_of_descriptors, .timeout = 30)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(child());
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "the child died");
    cr_assert_neq(WEXITSTATUS(status), 2, "setup failed");
    cr_assert_neq(WEXITSTATUS(status), 3, "the accept thread spun on EMFILE");
    cr_assert_eq(WEXITSTATUS(status), 0, "the agent did not accept once descriptors came back");
}
