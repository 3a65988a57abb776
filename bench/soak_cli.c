/*
 * soak_cli.c - kvrt-soak's command line (docs/soak.md).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "soak.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: kvrt-soak [options]\n"
            "  --nodes N              node processes (2..%u, default 4)\n"
            "  --duration S           seconds of traffic (default 150)\n"
            "  --seed N               seeds the workload, routing and fault schedule (1)\n"
            "  --faults LIST          kill,link,netem,slow,corrupt,diskfull,etcd,stop,\n"
            "                         loss; 'all'\n"
            "                         (default) or 'none'\n"
            "  --fault-interval S     quiet seconds between faults (default 8)\n"
            "  --fault-length S       seconds a link/netem/slow/corrupt fault lasts (5)\n"
            "  --rate R               mean request arrivals per second (default 6)\n"
            "  --trace FILE           replay a Mooncake (.jsonl) or Azure (.csv) trace\n"
            "  --time-scale X         trace arrival times are multiplied by X (default 1)\n"
            "  --request-timeout S    a request not ended after S seconds is hung (30)\n"
            "  --transfer-timeout-ms N  every KV transfer's deadline (default 2000)\n"
            "  --pool-blocks N        KV blocks per node (default 512; 4096 with --trace)\n"
            "  --rss-limit-mb N       bound on every node's RSS (default 512)\n"
            "  --loopback             no namespaces, even as root\n"
            "  --no-etcd              no etcd membership, directory or router\n"
            "  --lease-ttl S          the nodes' etcd lease (default 2)\n"
            "  --disaggregate P:D     P prefill nodes hand every request over to one of D\n"
            "                         decode nodes (sets --nodes); default: a mix\n"
            "  --handoff-share X      in the mix, the share of requests handed over (0.25)\n"
            "  --handoff-failure F    recompute (default) or fail a request whose hand-off\n"
            "                         failed\n"
            "  --handoff-no-expiry    prefill nodes serve tickets past their deadline\n"
            "  --json                 the report as JSON on stdout (summary on stderr)\n"
            "  --plot DIR             soak.json and soak.png into DIR (made if missing)\n"
            "Exit status: 0 when every invariant held, 1 when one broke, 2 on a usage or\n"
            "setup error, 3 when interrupted.\n",
            SOAK_MAX_NODES);
}

static int parse_faults(const char *list, int *on)
{
    int all = strcmp(list, "all") == 0, none = strcmp(list, "none") == 0;
    for (int k = 0; k < SOAK_FAULT_KINDS; k++)
        on[k] = all;
    if (all || none)
        return 0;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", list);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        int found = 0;
        for (int k = 0; k < SOAK_FAULT_KINDS; k++)
            if (strcmp(tok, soak_fault_names[k]) == 0)
                on[k] = found = 1;
        if (!found) {
            fprintf(stderr, "kvrt-soak: unknown fault kind '%s'\n", tok);
            return -1;
        }
    }
    return 0;
}

static int parse_number(const char *name, const char *text, double lo, double hi, double *out)
{
    char *end = NULL;
    double v = strtod(text, &end);
    if (!end || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "kvrt-soak: --%s must be a number in [%g, %g]\n", name, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

/* --disaggregate P:D, both at least 1. */
static int parse_split(const char *text, options_t *o)
{
    unsigned p = 0, d = 0;
    char tail = 0;
    if (sscanf(text, "%u:%u%c", &p, &d, &tail) != 2 || p < 1 || d < 1 ||
        p + d > SOAK_MAX_NODES) {
        fprintf(stderr, "kvrt-soak: --disaggregate wants P:D, each at least 1, P + D <= %u\n",
                SOAK_MAX_NODES);
        return -1;
    }
    o->prefill_nodes = p;
    o->decode_nodes = d;
    return 0;
}

int soak_parse_args(int argc, char **argv, options_t *o)
{
    *o = (options_t){.nodes = 4, .duration_s = 150, .rate = 6, .request_timeout_s = 30,
                     .fault_interval_s = 8, .fault_length_s = 5, .time_scale = 1, .seed = 1,
                     .transfer_timeout_ms = 2000, .pool_blocks = 512, .rss_limit_mb = 512,
                     .lease_ttl_s = 2, .handoff_share = 0.25};
    parse_faults("all", o->faults);
    static const struct option longs[] = {
        {"nodes", 1, 0, 'n'}, {"duration", 1, 0, 'd'}, {"seed", 1, 0, 's'},
        {"faults", 1, 0, 'f'}, {"fault-interval", 1, 0, 'i'}, {"fault-length", 1, 0, 'l'},
        {"rate", 1, 0, 'r'}, {"trace", 1, 0, 't'}, {"time-scale", 1, 0, 'x'},
        {"request-timeout", 1, 0, 'q'}, {"transfer-timeout-ms", 1, 0, 'm'},
        {"pool-blocks", 1, 0, 'b'}, {"rss-limit-mb", 1, 0, 'R'}, {"loopback", 0, 0, 'L'},
        {"no-etcd", 0, 0, 'E'}, {"lease-ttl", 1, 0, 'T'}, {"disaggregate", 1, 0, 'D'},
        {"handoff-share", 1, 0, 'H'}, {"handoff-failure", 1, 0, 'F'},
        {"handoff-no-expiry", 0, 0, 'X'},
        {"json", 0, 0, 'j'}, {"plot", 1, 0, 'p'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int c, which = 0, nodes_set = 0, pool_set = 0;
    double v = 0;
    while ((c = getopt_long(argc, argv, "", longs, &which)) != -1) {
        const char *name = longs[which].name;
        int bad = 0;
        switch (c) {
        case 'n':
            bad = parse_number(name, optarg, 2, SOAK_MAX_NODES, &v);
            o->nodes = (uint32_t)v;
            nodes_set = 1;
            break;
        case 'd': bad = parse_number(name, optarg, 5, 7 * 86400, &o->duration_s); break;
        case 's': bad = parse_number(name, optarg, 0, 9e15, &v); o->seed = (uint64_t)v; break;
        case 'f': bad = parse_faults(optarg, o->faults); break;
        case 'i': bad = parse_number(name, optarg, 0, 3600, &o->fault_interval_s); break;
        case 'l': bad = parse_number(name, optarg, 0.5, 600, &o->fault_length_s); break;
        case 'r': bad = parse_number(name, optarg, 0.1, 1000, &o->rate); break;
        case 't': o->trace = optarg; break;
        case 'x': bad = parse_number(name, optarg, 1e-6, 1e6, &o->time_scale); break;
        case 'q': bad = parse_number(name, optarg, 1, 3600, &o->request_timeout_s); break;
        case 'm': bad = parse_number(name, optarg, 50, 600000, &v); o->transfer_timeout_ms = (uint32_t)v; break;
        case 'b':
            bad = parse_number(name, optarg, 256, 1 << 20, &v);
            o->pool_blocks = (uint32_t)v;
            pool_set = 1;
            break;
        case 'R': bad = parse_number(name, optarg, 16, 1 << 20, &v); o->rss_limit_mb = (uint64_t)v; break;
        case 'L': o->loopback = 1; break;
        case 'E': o->no_etcd = 1; break;
        case 'T': bad = parse_number(name, optarg, 2, 60, &v); o->lease_ttl_s = (uint32_t)v; break;
        case 'D': bad = parse_split(optarg, o); break;
        case 'H': bad = parse_number(name, optarg, 0, 1, &o->handoff_share); break;
        case 'F':
            o->handoff_fail = strcmp(optarg, "fail") == 0;
            bad = !o->handoff_fail && strcmp(optarg, "recompute") != 0;
            if (bad)
                fprintf(stderr, "kvrt-soak: --handoff-failure is recompute or fail\n");
            break;
        case 'X': o->handoff_no_expiry = 1; break;
        case 'j': o->json = 1; break;
        case 'p': o->plot_dir = optarg; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
        if (bad)
            return -1;
    }
    if (optind != argc) {
        usage(stderr);
        return -1;
    }
    if (o->prefill_nodes && nodes_set && o->prefill_nodes + o->decode_nodes != o->nodes) {
        fprintf(stderr, "kvrt-soak: --disaggregate P:D needs P + D = --nodes (%u)\n", o->nodes);
        return -1;
    }
    if (o->prefill_nodes)
        o->nodes = o->prefill_nodes + o->decode_nodes;
    /* The plot folder is made (or refused) now, not after an hour of traffic. */
    if (o->plot_dir && ((mkdir(o->plot_dir, 0755) != 0 && errno != EEXIST) ||
                        access(o->plot_dir, W_OK) != 0)) {
        fprintf(stderr, "kvrt-soak: --plot %s: cannot write there (%s)\n", o->plot_dir,
                strerror(errno));
        return -1;
    }
    /* A trace's prompts run to 32K tokens: a pool that holds a few. */
    if (o->trace && !pool_set)
        o->pool_blocks = 4096;
    return 0;
}

