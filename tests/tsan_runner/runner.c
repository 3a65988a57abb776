/*
 * runner.c - runs the tests registered through the TSan stand-in for
 * Criterion (see criterion/criterion.h). Each test runs in a forked child
 * with its suite's init and fini and a timeout (default 300 s); a failed
 * assertion, a crash, a TSan report (halt_on_error) or a timeout fails it.
 * Prints Criterion's synthesis line so logs read the same, and reports
 * skips the way support/criterion_main.c does: "[SKIP] suite::name:
 * reason", a line in $KVRT_TEST_SKIP_LOG, and exit status
 * KVRT_TEST_SKIPPED when a test skipped and none failed.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "criterion/criterion.h"
#include "support/test_skip.h"

static kvrt_tsan_test_t *tests;
static const kvrt_tsan_test_t *running; /* in a test's child: that test */
static kvrt_tsan_suite_t *suites;

void kvrt_tsan_register_test(kvrt_tsan_test_t *test)
{
    kvrt_tsan_test_t **at = &tests; /* keep file order */
    while (*at)
        at = &(*at)->next;
    *at = test;
}

void kvrt_tsan_register_suite(kvrt_tsan_suite_t *suite)
{
    suite->next = suites;
    suites = suite;
}

void kvrt_tsan_check(bool ok, const char *expr, const char *file, int line,
                     const char *fmt, ...)
{
    if (ok)
        return;
    fprintf(stderr, "[----] %s:%d: Assertion Failed: %s\n", file, line, expr);
    if (fmt && *fmt) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "[----]   ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n");
        va_end(ap);
    }
    fflush(stderr);
    _exit(1);
}

void kvrt_tsan_skip(const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (!why[0])
        snprintf(why, sizeof(why), "no reason given");
    fprintf(stderr, "[SKIP] %s::%s: %s\n", running->suite, running->name, why);
    const char *log_path = getenv("KVRT_TEST_SKIP_LOG");
    FILE *log = log_path && *log_path ? fopen(log_path, "a") : NULL;
    if (log) {
        fprintf(log, "%s::%s\t%s\n", running->suite, running->name, why);
        fclose(log);
    }
    fflush(stderr);
    _exit(KVRT_TEST_SKIPPED);
}

void kvrt_tsan_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[LOG] ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static const kvrt_tsan_opts_t *suite_opts(const char *name)
{
    for (kvrt_tsan_suite_t *s = suites; s; s = s->next)
        if (strcmp(s->name, name) == 0)
            return &s->opts;
    return NULL;
}

/* 0 passed, 1 failed, 2 skipped. */
static int run_one(const kvrt_tsan_test_t *t)
{
    const kvrt_tsan_opts_t *s = suite_opts(t->suite);
    void (*init)(void) = t->opts.init ? t->opts.init : s ? s->init : NULL;
    void (*fini)(void) = t->opts.fini ? t->opts.fini : s ? s->fini : NULL;
    double timeout = t->opts.timeout > 0 ? t->opts.timeout
                     : s && s->timeout > 0 ? s->timeout : 300;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        running = t;
        alarm((unsigned)timeout + 1);
        if (init)
            init();
        t->fn();
        if (fini)
            fini();
        fflush(NULL);
        _exit(0);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == KVRT_TEST_SKIPPED)
        return 2;
    if (WIFSIGNALED(status))
        fprintf(stderr, "[----] %s::%s: %s\n", t->suite, t->name,
                WTERMSIG(status) == SIGALRM ? "timed out" : strsignal(WTERMSIG(status)));
    return 1;
}

int main(int argc, char **argv)
{
    const char *filter = NULL;
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], "--filter=", 9) == 0)
            filter = argv[i] + 9;
    int passed = 0, failed = 0, skipped = 0;
    for (kvrt_tsan_test_t *t = tests; t; t = t->next) {
        if (filter && !strstr(t->name, filter) && !strstr(t->suite, filter))
            continue;
        if (t->opts.disabled) {
            skipped++;
            continue;
        }
        int r = run_one(t);
        printf("[%s] %s::%s\n", r == 0 ? "PASS" : r == 2 ? "SKIP" : "FAIL", t->suite, t->name);
        passed += r == 0;
        failed += r == 1;
        skipped += r == 2;
    }
    printf("[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | Crashing: 0 \n",
           passed + failed, passed, failed);
    if (skipped)
        printf("[====] %d skipped\n", skipped);
    if (failed)
        return 1;
    return skipped ? KVRT_TEST_SKIPPED : 0;
}
