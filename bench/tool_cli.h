/*
 * tool_cli.h - what kvrt-sim, kvrt-replay and kvrt-bench share on the
 * command line: one exit-status convention and one way of reporting an
 * option getopt_long could not take.
 */
#ifndef KVRT_BENCH_TOOL_CLI_H
#define KVRT_BENCH_TOOL_CLI_H

/* Exit statuses of every kvrt tool, stated in each one's --help. */
enum {
    TOOL_EXIT_OK = 0,      /* the run completed */
    TOOL_EXIT_FAILURE = 1, /* the run failed: kvrt refused something, a check broke */
    TOOL_EXIT_USAGE = 2    /* bad usage or input: options, values, trace files */
};

/* The optstring prefix that makes getopt_long return ':' for a missing
 * value and '?' for an unknown option, printing nothing itself. */
#define TOOL_GETOPT_QUIET ":"

/*
 * tool_option_error - after getopt_long (optstring starting with
 * TOOL_GETOPT_QUIET) returned '?' or ':': prints
 * "<program>: unknown option '<arg>' (see --help)" or
 * "<program>: option '<arg>' needs a value (see --help)" to stderr.
 * Returns TOOL_EXIT_USAGE.
 */
int tool_option_error(const char *program, int getopt_result, char **argv);

#endif /* KVRT_BENCH_TOOL_CLI_H */
