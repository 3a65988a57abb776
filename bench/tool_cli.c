/*
 * tool_cli.c - the command-line conventions the kvrt tools share
 * (tool_cli.h).
 */
#include "tool_cli.h"

#include <getopt.h>
#include <stdio.h>

int tool_option_error(const char *program, int getopt_result, char **argv)
{
    /* A long option is named by the argument getopt_long just passed; a
     * short one by optopt, since it may sit inside a cluster like -qx. */
    const char *arg = argv[optind - 1];
    char short_option[3] = {'-', (char)optopt, '\0'};
    if (optopt > 0 && optopt < 128 && !(arg[0] == '-' && arg[1] == '-'))
        arg = short_option;
    if (getopt_result == ':')
        fprintf(stderr, "%s: option '%s' needs a value (see --help)\n", program, arg);
    else
        fprintf(stderr, "%s: unknown option '%s' (see --help)\n", program, arg);
    return TOOL_EXIT_USAGE;
}
