/*
 * tool_run.h - runs one of kvrt's programs (kvrt-sim, kvrt-replay,
 * kvrt-bench) as a user would, capturing its exit status, stdout and
 * stderr, for the tests of their command lines.
 */
#ifndef KVRT_TEST_TOOL_RUN_H
#define KVRT_TEST_TOOL_RUN_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct tool_output {
    int status; /* exit status; 128 when killed by a signal */
    char *out;
    char *err;
} tool_output_t;

static inline char *tool_slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 1024) {
            buf = realloc(buf, cap *= 2);
            cr_assert_not_null(buf);
        }
    }
    buf[len] = '\0';
    fclose(f);
    return buf;
}

/* Runs program with args (NULL-terminated, at most 62), no shell. */
static inline tool_output_t tool_run(const char *program, const char *const *args)
{
    char out_path[] = "/tmp/kvrt-tool-out-XXXXXX";
    char err_path[] = "/tmp/kvrt-tool-err-XXXXXX";
    int out_fd = mkstemp(out_path), err_fd = mkstemp(err_path);
    cr_assert(out_fd >= 0 && err_fd >= 0);
    const char *argv[64] = {program};
    int argc = 1;
    for (; args[argc - 1] && argc < 63; argc++)
        argv[argc] = args[argc - 1];
    argv[argc] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(out_fd, 1);
        dup2(err_fd, 2);
        execv(program, (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    close(out_fd);
    close(err_fd);
    tool_output_t o = {.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128,
                       .out = tool_slurp(out_path), .err = tool_slurp(err_path)};
    unlink(out_path);
    unlink(err_path);
    return o;
}

static inline void tool_output_free(tool_output_t *o)
{
    free(o->out);
    free(o->err);
}

#endif /* KVRT_TEST_TOOL_RUN_H */
