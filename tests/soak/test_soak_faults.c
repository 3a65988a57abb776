/*
 * test_soak_faults.c - kvrt-soak as cluster CI runs it, only shorter: four
 * nodes, every fault kind the machine offers injected at least once, and
 * every invariant holding (exit 0, and the JSON figures that say so), with
 * etcd membership and kvrt's router when /usr/bin/etcd exists. Also:
 * SIGTERM tears everything down, and without namespaces the run degrades
 * to loopback and says so. Every run is bounded in time and ended by its
 * pid.
 */
#include <cJSON.h>
#include <criterion/criterion.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct soak_run {
    pid_t pid;
    int status;                 /* exit status; 128 + signal when killed */
    char out[1 << 18];          /* stdout: the JSON report */
} soak_run_t;

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/*
 * Runs kvrt-soak with args; sends SIGTERM after term_after_s when > 0 and
 * SIGKILL at limit_s (then the test fails). stderr goes to the test's own.
 */
static void soak_run(soak_run_t *r, const char *const *args, double term_after_s,
                     double limit_s)
{
    const char *argv[32] = {KVRT_SOAK_PATH};
    int argc = 1;
    while (args[argc - 1] && argc < 31) {
        argv[argc] = args[argc - 1];
        argc++;
    }
    argv[argc] = NULL;
    int pipefd[2];
    cr_assert_eq(pipe(pipefd), 0);
    r->pid = fork();
    cr_assert_geq(r->pid, 0);
    if (r->pid == 0) {
        dup2(pipefd[1], 1);
        close(pipefd[0]);
        execv(KVRT_SOAK_PATH, (char *const *)argv);
        _exit(127);
    }
    close(pipefd[1]);
    size_t len = 0;
    double start = mono_s();
    int termed = 0, killed = 0;
    for (;;) {
        double t = mono_s() - start;
        if (term_after_s > 0 && t > term_after_s && !termed) {
            kill(r->pid, SIGTERM);
            termed = 1;
        }
        if (t > limit_s && !killed) {
            kill(r->pid, SIGKILL);
            killed = 1;
        }
        struct pollfd p = {.fd = pipefd[0], .events = POLLIN};
        if (poll(&p, 1, 200) > 0) {
            ssize_t n = read(pipefd[0], r->out + len, sizeof(r->out) - 1 - len);
            if (n == 0)
                break;
            if (n > 0)
                len += (size_t)n;
        }
    }
    r->out[len] = '\0';
    close(pipefd[0]);
    int status = 0;
    cr_assert_eq(waitpid(r->pid, &status, 0), r->pid);
    r->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    cr_assert(!killed, "kvrt-soak ran past %.0f s", limit_s);
}

/* No namespace of the run is left (`ip netns list` has none with its pid),
 * nor its SSD directories. */
static void assert_torn_down(pid_t pid)
{
    char path[96];
    struct stat st;
    snprintf(path, sizeof(path), "/tmp/kvrt-soak-%d", (int)pid);
    cr_assert_neq(stat(path, &st), 0, "%s (SSD directories) left behind", path);
    snprintf(path, sizeof(path), "/var/run/netns/kvrtsoak-%d-br", (int)pid);
    cr_assert_neq(stat(path, &st), 0, "%s left behind", path);
    for (int i = 0; i < 16; i++) {
        snprintf(path, sizeof(path), "/var/run/netns/kvrtsoak-%d-n%d", (int)pid, i);
        cr_assert_neq(stat(path, &st), 0, "%s left behind", path);
    }
}

static double num(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItem(obj, name);
    cr_assert(cJSON_IsNumber(v), "'%s' is not a number", name);
    return v->valuedouble;
}

Test(soak, every_available_fault_and_every_invariant, .timeout = 150)
{
    static soak_run_t r;
    soak_run(&r, (const char *const[]){"--duration", "45", "--fault-interval", "1",
                                       "--fault-length", "2", "--seed", "7", "--json", NULL},
             0, 140);
    cr_assert_eq(r.status, 0, "an invariant broke (stderr has the summary); exit %d", r.status);
    cJSON *root = cJSON_Parse(r.out);
    cr_assert_not_null(root, "not JSON: %s", r.out);
    const cJSON *req = cJSON_GetObjectItem(root, "requests");
    double submitted = num(req, "submitted");
    cr_assert_gt(submitted, 20);
    cr_assert_gt(num(req, "finished"), submitted / 2, "most requests should finish");
    cr_assert_eq(num(req, "finished") + num(req, "aborted") + num(req, "failed"), submitted);
    cr_assert_eq(num(req, "lost"), 0);
    cr_assert_eq(num(req, "hung"), 0);
    cr_assert_eq(num(root, "leaked_blocks"), 0);
    cr_assert_eq(num(root, "leaked_registrations"), 0);
    cr_assert_eq(num(root, "corrupt_deliveries"), 0);
    /* The corrupter damaged real deliveries and the receivers caught them. */
    cr_assert_gt(num(root, "corrupt_injected"), 0);
    cr_assert_gt(num(root, "corrupt_rejected"), 0);
    cr_assert_gt(num(cJSON_GetObjectItem(root, "pulls"), "blocks"), 0);
    const cJSON *faults = cJSON_GetObjectItem(root, "faults_injected");
    const char *always[] = {"kill", "stop", "corrupt"};
    for (size_t i = 0; i < sizeof(always) / sizeof(always[0]); i++)
        cr_assert_geq(num(faults, always[i]), 1, "%s never injected", always[i]);
    int netns = strncmp(cJSON_GetObjectItem(root, "network")->valuestring, "netns", 5) == 0;
    const cJSON *f = NULL;
    cJSON_ArrayForEach(f, faults)
    {
        /* A kind is injected, or plainly not available here: never both. */
        if (cJSON_IsString(f)) {
            cr_assert_str_eq(f->valuestring, "not available");
            cr_assert(strcmp(f->string, "kill") && strcmp(f->string, "stop") &&
                          strcmp(f->string, "corrupt") &&
                          ((strcmp(f->string, "link") && strcmp(f->string, "diskfull")) ||
                           !netns),
                      "%s reported unavailable", f->string);
        } else {
            cr_assert_geq(f->valuedouble, 1, "%s never injected", f->string);
        }
    }
    /* With etcd: requests were routed by kvrt's cache-aware router over the
     * directory the nodes' KV events built, and a killed node's entries
     * were gone once its lease expired (checked, not assumed). */
    if (access("/usr/bin/etcd", X_OK) == 0) {
        const cJSON *cl = cJSON_GetObjectItem(root, "cluster");
        cr_assert_geq(num(faults, "etcd"), 1, "etcd never killed");
        cr_assert_gt(num(cl, "routed"), 0);
        cr_assert_gt(num(cl, "events_applied"), 0);
        cr_assert_geq(num(cl, "directory_checks"), 1);
        cr_assert_eq(num(cl, "stale_directory_nodes"), 0);
    }
    /* As root every node has an SSD tier on a tmpfs of its own. */
    if (netns)
        cr_assert_geq(num(faults, "diskfull"), 1, "diskfull never injected");
    /* A quarter of the requests were handed over from a prefill node; every
     * block that landed was verified and none was wrong; nothing was left. */
    const cJSON *ho = cJSON_GetObjectItem(root, "handoffs");
    cr_assert_gt(num(ho, "accepted"), 0);
    cr_assert_gt(num(ho, "blocks_verified"), 0);
    cr_assert_eq(num(ho, "bad_blocks"), 0);
    cr_assert_eq(num(ho, "left"), 0);
    cr_assert_eq(num(cJSON_GetObjectItem(root, "onloads"), "bad_blocks"), 0);
    cJSON_Delete(root);
    assert_torn_down(r.pid);
}

/*
 * Disaggregated: two prefill nodes hand every request over to two decode
 * nodes; every other stop strikes a prefill node right after it got a
 * ticket, for longer than the hand-off's deadline. Under the FAIL policy
 * a failed hand-off aborts its request and nothing else does: aborted
 * requests == failed hand-offs (>= 1), each ended once. (Stops, not kills:
 * a killed node's last counters may miss a failure it already reported.)
 */
Test(soak, disaggregated_handoffs_end_each_request_once, .timeout = 150)
{
    static soak_run_t r;
    soak_run(&r, (const char *const[]){"--disaggregate", "2:2", "--duration", "30",
                                       "--faults", "stop", "--fault-interval", "1",
                                       "--handoff-failure", "fail", "--seed", "3", "--json",
                                       NULL},
             0, 140);
    cr_assert_eq(r.status, 0, "an invariant broke (stderr has the summary); exit %d", r.status);
    cJSON *root = cJSON_Parse(r.out);
    cr_assert_not_null(root, "not JSON: %s", r.out);
    const cJSON *req = cJSON_GetObjectItem(root, "requests");
    const cJSON *ho = cJSON_GetObjectItem(root, "handoffs");
    cr_assert_gt(num(ho, "accepted"), 10);
    cr_assert_eq(num(ho, "recomputed"), 0, "the FAIL policy never recomputes");
    cr_assert_eq(num(req, "aborted"), num(ho, "failed"));
    cr_assert_geq(num(ho, "failed"), 1, "no hand-off met a stopped prefill node");
    cr_assert_geq(num(ho, "fault_hits"), 1, "no fault struck a prefill node");
    cr_assert_eq(num(ho, "bad_blocks"), 0);
    cr_assert_eq(num(ho, "left"), 0);
    cr_assert_eq(num(req, "lost"), 0);
    cr_assert_eq(num(root, "leaked_blocks"), 0);
    /* Decode nodes never prefill for a peer: no pulls either. */
    cr_assert_eq(num(cJSON_GetObjectItem(root, "pulls"), "started"), 0);
    cJSON_Delete(root);
    assert_torn_down(r.pid);
}

Test(soak, sigterm_tears_everything_down, .timeout = 120)
{
    static soak_run_t r;
    soak_run(&r, (const char *const[]){"--duration", "600", "--fault-interval", "1",
                                       "--fault-length", "1", "--json", NULL},
             6, 100);
    cr_assert_eq(r.status, 3, "interrupted runs exit 3, got %d", r.status);
    assert_torn_down(r.pid);
}

Test(soak, loopback_without_namespaces_says_so, .timeout = 120)
{
    static soak_run_t r;
    soak_run(&r, (const char *const[]){"--loopback", "--nodes", "3", "--duration", "14",
                                       "--fault-interval", "1", "--fault-length", "1",
                                       "--faults", "kill,link,stop", "--json", NULL},
             0, 100);
    cr_assert_eq(r.status, 0, "exit %d", r.status);
    cJSON *root = cJSON_Parse(r.out);
    cr_assert_not_null(root);
    cr_assert(strstr(cJSON_GetObjectItem(root, "network")->valuestring, "loopback"));
    const cJSON *faults = cJSON_GetObjectItem(root, "faults_injected");
    cr_assert_str_eq(cJSON_GetObjectItem(faults, "link")->valuestring, "not available");
    cr_assert_geq(num(faults, "kill"), 1);
    /* Switched off: reported as zero injected, not as injected. */
    cr_assert_eq(num(faults, "corrupt"), 0);
    cJSON_Delete(root);
}

Test(soak, bad_flags_exit_2, .timeout = 30)
{
    static soak_run_t r;
    soak_run(&r, (const char *const[]){"--faults", "kill,meteor", NULL}, 0, 20);
    cr_assert_eq(r.status, 2);
    soak_run(&r, (const char *const[]){"--nodes", "1", NULL}, 0, 20);
    cr_assert_eq(r.status, 2);
    soak_run(&r, (const char *const[]){"--disaggregate", "2", NULL}, 0, 20);
    cr_assert_eq(r.status, 2);
    soak_run(&r, (const char *const[]){"--nodes", "3", "--disaggregate", "2:2", NULL}, 0, 20);
    cr_assert_eq(r.status, 2);
    soak_run(&r, (const char *const[]){"--handoff-failure", "maybe", NULL}, 0, 20);
    cr_assert_eq(r.status, 2);
    /* Refused before any traffic, not after it: the folder cannot be made. */
    soak_run(&r, (const char *const[]){"--plot", "/nonexistent-kvrt-soak/plots", NULL}, 0, 20);
    cr_assert_eq(r.status, 2);
}
