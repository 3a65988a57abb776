/*
 * soak_netns.c - kvrt-soak's private network (soak_netns.h), built with
 * iproute2 commands so that what the harness does is what an operator
 * would type.
 */
#include "soak_netns.h"

#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int soak_sh(const char *fmt, ...)
{
    char cmd[1024], quiet[1100];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    snprintf(quiet, sizeof(quiet), "%s >/dev/null 2>&1", cmd);
    int rc = system(quiet);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

void soak_net_down(soak_net_t *net)
{
    if (!net->made)
        return;
    net->made = 0;
    for (uint32_t i = 0; i < net->nodes; i++)
        soak_sh("ip netns del %s", net->node_ns[i]);
    soak_sh("ip netns del %s", net->bridge_ns);
}

const char *soak_net_up(soak_net_t *net, uint32_t nodes)
{
    if (geteuid() != 0)
        return "not root: network namespaces need CAP_SYS_ADMIN";
    if (soak_sh("ip -V") != 0)
        return "iproute2 (ip) is not installed";
    *net = (soak_net_t){.nodes = nodes, .tag = (unsigned)getpid()};
    unsigned sub = net->tag % 250u;
    snprintf(net->bridge_ns, sizeof(net->bridge_ns), "kvrtsoak-%u-br", net->tag);
    if (soak_sh("ip netns add %s", net->bridge_ns) != 0)
        return "ip netns add failed (no namespace support here)";
    net->made = 1;
    snprintf(net->bridge_address, sizeof(net->bridge_address), "10.231.%u.1", sub);
    if (soak_sh("ip -n %s link add br0 type bridge", net->bridge_ns) != 0 ||
        soak_sh("ip -n %s addr add %s/24 dev br0", net->bridge_ns, net->bridge_address) != 0 ||
        soak_sh("ip -n %s link set lo up", net->bridge_ns) != 0 ||
        soak_sh("ip -n %s link set br0 up", net->bridge_ns) != 0) {
        soak_net_down(net);
        return "bridge setup failed";
    }
    for (uint32_t i = 0; i < nodes; i++) {
        snprintf(net->node_ns[i], sizeof(net->node_ns[i]), "kvrtsoak-%u-n%u", net->tag, i);
        snprintf(net->node_if[i], sizeof(net->node_if[i]), "eth0");
        snprintf(net->address[i], sizeof(net->address[i]), "10.231.%u.%u", sub, i + 10);
        char br_end[32], node_end[32];
        snprintf(br_end, sizeof(br_end), "ks%ub%u", net->tag % 100000u, i);
        snprintf(net->bridge_if[i], sizeof(net->bridge_if[i]), "%.15s", br_end);
        snprintf(node_end, sizeof(node_end), "ks%un%u", net->tag % 100000u, i);
        if (soak_sh("ip netns add %s", net->node_ns[i]) != 0 ||
            soak_sh("ip link add %s netns %s type veth peer name %s netns %s", node_end,
                    net->node_ns[i], br_end, net->bridge_ns) != 0 ||
            soak_sh("ip -n %s link set %s name eth0", net->node_ns[i], node_end) != 0 ||
            soak_sh("ip -n %s link set %s master br0 up", net->bridge_ns, br_end) != 0 ||
            soak_sh("ip -n %s addr add %s/24 dev eth0", net->node_ns[i], net->address[i]) != 0 ||
            soak_sh("ip -n %s link set eth0 up", net->node_ns[i]) != 0 ||
            soak_sh("ip -n %s link set lo up", net->node_ns[i]) != 0) {
            net->nodes = i + 1;
            soak_net_down(net);
            return "veth or address setup failed";
        }
    }
    return NULL;
}

static int enter(const char *ns)
{
    char path[96];
    snprintf(path, sizeof(path), "/var/run/netns/%s", ns);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = setns(fd, CLONE_NEWNET);
    close(fd);
    return rc;
}

int soak_net_enter(const soak_net_t *net, uint32_t node) { return enter(net->node_ns[node]); }

int soak_net_enter_bridge(const soak_net_t *net) { return enter(net->bridge_ns); }

int soak_net_link(const soak_net_t *net, uint32_t node, int up)
{
    return soak_sh("ip -n %s link set eth0 %s", net->node_ns[node], up ? "up" : "down");
}

int soak_net_qdisc(const soak_net_t *net, uint32_t node, const char *qdisc)
{
    if (!qdisc)
        return soak_sh("tc -n %s qdisc del dev eth0 root", net->node_ns[node]);
    return soak_sh("tc -n %s qdisc replace dev eth0 root %s", net->node_ns[node], qdisc);
}

int soak_net_has_qdisc(const soak_net_t *net, const char *qdisc)
{
    if (!net->made || soak_net_qdisc(net, 0, qdisc) != 0)
        return 0;
    soak_net_qdisc(net, 0, NULL);
    return 1;
}

/*
 * Without sch_netem: loss with nftables' random numbers at the ingress of
 * both ends of the node's veth (so it looks like loss on the wire to both
 * sides), and reordering by sending LOSSY_REORDER_PCT of the node's
 * outbound packets through a slow HTB class (skb priority 1:20, set by
 * nftables): they queue behind and arrive late, delayed and out of order.
 */
#define LOSSY_LOSS_PCT 3
#define LOSSY_REORDER_PCT 10
#define LOSSY_SLOW_CLASS "20mbit"

/* Sums the "counter packets N" of an nft listing. */
static uint64_t nft_packets(const char *cmd)
{
    FILE *p = popen(cmd, "r");
    if (!p)
        return 0;
    char line[512];
    uint64_t sum = 0;
    while (fgets(line, sizeof(line), p)) {
        const char *c = strstr(line, "counter packets ");
        if (c)
            sum += strtoull(c + strlen("counter packets "), NULL, 10);
    }
    pclose(p);
    return sum;
}

int soak_net_lossy(const soak_net_t *net, uint32_t node, int on, uint64_t *dropped,
                   uint64_t *delayed)
{
    const char *ns = net->node_ns[node], *br = net->bridge_ns;
    if (!on && dropped && delayed) {
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "ip netns exec %s nft list table netdev kvrtsoak 2>/dev/null",
                 ns);
        *dropped = nft_packets(cmd);
        snprintf(cmd, sizeof(cmd),
                 "ip netns exec %s nft list table netdev kvrtsoak_n%u 2>/dev/null", br, node);
        *dropped += nft_packets(cmd);
        snprintf(cmd, sizeof(cmd), "ip netns exec %s nft list table inet kvrtsoak 2>/dev/null",
                 ns);
        *delayed = nft_packets(cmd);
    }
    if (!on) {
        int rc = soak_sh("tc -n %s qdisc del dev eth0 root", ns);
        rc |= soak_sh("ip netns exec %s nft 'delete table netdev kvrtsoak; "
                      "delete table inet kvrtsoak'", ns);
        rc |= soak_sh("ip netns exec %s nft 'delete table netdev kvrtsoak_n%u'", br, node);
        return rc;
    }
    int rc = soak_sh("tc -n %s qdisc replace dev eth0 root handle 1: htb default 10", ns);
    if (rc == 0)
        rc = soak_sh("tc -n %s class add dev eth0 parent 1: classid 1:10 htb rate 100gbit", ns);
    if (rc == 0)
        rc = soak_sh("tc -n %s class add dev eth0 parent 1: classid 1:20 htb rate %s ceil %s",
                     ns, LOSSY_SLOW_CLASS, LOSSY_SLOW_CLASS);
    if (rc == 0)
        rc = soak_sh("ip netns exec %s nft 'add table netdev kvrtsoak; "
                     "add chain netdev kvrtsoak in { type filter hook ingress device \"eth0\" "
                     "priority 0; }; "
                     "add rule netdev kvrtsoak in numgen random mod 100 < %d counter drop; "
                     "add table inet kvrtsoak; "
                     "add chain inet kvrtsoak out { type filter hook output priority 0; }; "
                     "add rule inet kvrtsoak out oifname \"eth0\" numgen random mod 100 < %d "
                     "counter meta priority set 1:20'",
                     ns, LOSSY_LOSS_PCT, LOSSY_REORDER_PCT);
    if (rc == 0)
        rc = soak_sh("ip netns exec %s nft 'add table netdev kvrtsoak_n%u; "
                     "add chain netdev kvrtsoak_n%u in { type filter hook ingress device "
                     "\"%s\" priority 0; }; "
                     "add rule netdev kvrtsoak_n%u in numgen random mod 100 < %d counter drop'",
                     br, node, node, net->bridge_if[node], node, LOSSY_LOSS_PCT);
    if (rc != 0)
        soak_net_lossy(net, node, 0, NULL, NULL);
    return rc;
}

int soak_net_has_lossy(const soak_net_t *net)
{
    if (!net->made || soak_sh("nft --version") != 0 ||
        soak_net_lossy(net, 0, 1, NULL, NULL) != 0)
        return 0;
    soak_net_lossy(net, 0, 0, NULL, NULL);
    return 1;
}
