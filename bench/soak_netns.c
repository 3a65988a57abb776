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
#include <sys/wait.h>
#include <unistd.h>

int soak_sh(const char *fmt, ...)
{
    char cmd[512], quiet[600];
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
