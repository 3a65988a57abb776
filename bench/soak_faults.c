/*
 * soak_faults.c - kvrt-soak's fault injector: one fault at a time, kinds
 * taken in a seeded shuffled round so every enabled kind comes up, victims
 * drawn from the nodes that are up. Each fault is undone ("healed") after
 * its length; a killed node is restarted by the main loop a second after
 * it is reaped.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "soak.h"

static void record(soak_t *s, double t, soak_fault_kind_t kind, uint32_t node)
{
    soak_report_t *r = s->rep;
    r->faults[kind]++;
    if (r->num_events < SOAK_EVENTS_MAX)
        r->events[r->num_events++] = (soak_event_t){.t = t, .kind = kind, .node = node};
}

void soak_fault_plan(soak_t *s)
{
    fault_t *f = &s->fault;
    f->num_kinds = 0;
    for (int k = 0; k < SOAK_FAULT_KINDS; k++)
        if (s->rep->enabled[k] && s->rep->available[k])
            f->order[f->num_kinds++] = (soak_fault_kind_t)k;
    for (uint32_t i = f->num_kinds; i > 1; i--) {
        uint32_t j = sim_rng_below(&s->rng, i);
        soak_fault_kind_t tmp = f->order[i - 1];
        f->order[i - 1] = f->order[j];
        f->order[j] = tmp;
    }
    f->next_at = s->o.duration_s * 0.05 < 3.0 ? s->o.duration_s * 0.05 : 3.0;
}

/*
 * A node that is up, never the last one standing. A disk-full fault goes
 * to the node that onloaded most from its SSD so far, so the full disk
 * meets onloads.
 */
static int victim(soak_t *s, soak_fault_kind_t kind, uint32_t *out)
{
    uint32_t up[SOAK_MAX_NODES], n = 0, best = 0;
    for (uint32_t i = 0; i < s->o.nodes; i++)
        if (s->nodes[i].state == NODE_UP && s->nodes[i].pid > 0) {
            up[n++] = i;
            if (s->nodes[i].last.onload_ssd_blocks > s->nodes[up[best]].last.onload_ssd_blocks)
                best = n - 1;
        }
    if (n < 2)
        return -1;
    *out = kind == SOAK_FAULT_DISKFULL && s->nodes[up[best]].last.onload_ssd_blocks > 0
               ? up[best]
               : up[sim_rng_below(&s->rng, n)];
    return 0;
}

/* Kill and stop faults strike a prefill node mid-hand-off every other
 * time (when hand-offs run): the first, third... of each kind. */
static int strikes_handoff(const soak_t *s, soak_fault_kind_t kind)
{
    return (kind == SOAK_FAULT_KILL || kind == SOAK_FAULT_STOP) &&
           (s->o.prefill_nodes > 0 || s->o.handoff_share > 0) && s->rep->faults[kind] % 2 == 0;
}

void soak_fault_ticket_relayed(soak_t *s, uint32_t prefill_node)
{
    fault_t *f = &s->fault;
    if (!f->strike_armed || f->strike_node != SOAK_NO_NODE)
        return;
    /* Within 10 ms of the ticket's arrival: the prefill alone (two model
     * steps) takes longer here, so the send is still to come or under way. */
    f->strike_node = prefill_node;
    f->strike_at = soak_now() - s->t0 + sim_rng_unit(&s->rng) * 0.01;
}

/* Arms (or disarms) the receive-path corrupter of every node, so whichever
 * node pulls next gets a damaged block. */
static int corrupter(soak_t *s, int armed)
{
    soak_msg_corrupt_t m = {.type = SOAK_MSG_CORRUPT, .armed = (uint32_t)armed};
    for (uint32_t i = 0; i < s->o.nodes; i++)
        soak_send(s, i, &m, sizeof(m));
    return 0;
}

static int inject(soak_t *s, soak_fault_kind_t kind, uint32_t node, double *length)
{
    node_proc_t *np = &s->nodes[node];
    *length = s->o.fault_length_s;
    switch (kind) {
    case SOAK_FAULT_KILL:
        np->killed_on_purpose = 1;
        /* Until it is back: with etcd that is past its lease. */
        *length = s->etcd ? s->o.lease_ttl_s + 3.5 : 1.0;
        return kill(np->pid, SIGKILL);
    case SOAK_FAULT_STOP:
        /* Past the transfer timeout, so peers' pulls from it time out. */
        *length = s->o.transfer_timeout_ms / 1000.0 + 1.5;
        np->stopped = 1;
        return kill(np->pid, SIGSTOP);
    case SOAK_FAULT_LINK:
        return soak_net_link(&s->net, node, 0);
    case SOAK_FAULT_NETEM:
        return soak_net_qdisc(&s->net, node, SOAK_NETEM);
    case SOAK_FAULT_SLOW:
        return soak_net_qdisc(&s->net, node, SOAK_SLOW);
    case SOAK_FAULT_LOSS:
        return soak_net_lossy(&s->net, node, 1, NULL, NULL);
    case SOAK_FAULT_CORRUPT:
        return corrupter(s, 1);
    case SOAK_FAULT_ETCD:
        return soak_cluster_etcd_kill(&s->cluster);
    case SOAK_FAULT_DISKFULL:
        s->fault.ssd_onloads_base = np->last.onload_ssd_blocks;
        s->fault.ssd_errors_base = np->last.ssd_errors;
        s->fault.generation = np->generation;
        return soak_disk_fill(&s->disk, node);
    default:
        return -1;
    }
}

void soak_fault_heal(soak_t *s)
{
    fault_t *f = &s->fault;
    if (!f->active)
        return;
    f->active = 0;
    node_proc_t *np = &s->nodes[f->node];
    switch (f->kind) {
    case SOAK_FAULT_STOP:
        if (np->pid > 0 && np->stopped)
            kill(np->pid, SIGCONT);
        np->stopped = 0;
        break;
    case SOAK_FAULT_LINK:
        soak_net_link(&s->net, f->node, 1);
        break;
    case SOAK_FAULT_NETEM:
    case SOAK_FAULT_SLOW:
        soak_net_qdisc(&s->net, f->node, NULL);
        break;
    case SOAK_FAULT_LOSS: {
        uint64_t dropped = 0, delayed = 0;
        soak_net_lossy(&s->net, f->node, 0, &dropped, &delayed);
        s->rep->loss_dropped += dropped;
        s->rep->loss_delayed += delayed;
        break;
    }
    case SOAK_FAULT_CORRUPT:
        corrupter(s, 0);
        break;
    case SOAK_FAULT_DISKFULL:
        /* SSD onloads the node made while its disk was full (reads go on
         * while writes fail). */
        if (np->generation == f->generation) {
            s->rep->diskfull_ssd_onloads += np->last.onload_ssd_blocks - f->ssd_onloads_base;
            s->rep->diskfull_ssd_errors += np->last.ssd_errors - f->ssd_errors_base;
        }
        soak_disk_free(&s->disk, f->node);
        break;
    case SOAK_FAULT_ETCD:
        if (soak_cluster_etcd_restart(&s->cluster) != 0)
            fprintf(stderr, "kvrt-soak: could not restart etcd\n");
        break;
    default:
        break;
    }
}

/* Blocks the corrupter damaged so far, all nodes, all incarnations. */
static uint64_t corrupted(const soak_t *s)
{
    uint64_t n = s->rep->counters.corrupt_injected;
    for (uint32_t i = 0; i < s->o.nodes; i++)
        n += s->nodes[i].last.corrupt_injected;
    return n;
}

/* Some node up now has onloaded from its SSD. */
static int ssd_onloads_seen(const soak_t *s)
{
    for (uint32_t i = 0; i < s->o.nodes; i++)
        if (s->nodes[i].state == NODE_UP && s->nodes[i].last.onload_ssd_blocks > 0)
            return 1;
    return 0;
}

void soak_fault_tick(soak_t *s, double t)
{
    fault_t *f = &s->fault;
    /* A corrupt fault lasts until a delivery was actually damaged (pulls
     * come with traffic), at most 20 s past its length. */
    if (f->active && f->kind == SOAK_FAULT_CORRUPT && t >= f->heal_at &&
        corrupted(s) == f->corrupt_base && t < f->heal_at + 20.0)
        return;
    /* A disk-full fault lasts until its node onloaded from its SSD, at
     * most four lengths past its length. */
    node_proc_t *fp = &s->nodes[f->node];
    if (f->active && f->kind == SOAK_FAULT_DISKFULL && t >= f->heal_at &&
        fp->generation == f->generation && fp->last.onload_ssd_blocks == f->ssd_onloads_base &&
        t < f->heal_at + 4.0 * s->o.fault_length_s)
        return;
    if (f->active && t >= f->heal_at) {
        soak_fault_heal(s);
        f->next_at = t + s->o.fault_interval_s;
    }
    /* No new fault so close to the end that it could not be healed and
     * recovered from before traffic stops. */
    if (f->active || f->num_kinds == 0 || t < f->next_at ||
        t > s->o.duration_s - s->o.fault_length_s - 3.0)
        return;
    /* A full disk should meet onloads from SSD: while no node has onloaded
     * from its SSD yet (the first half of the run at most), the next kind
     * goes first. */
    uint32_t at = f->turn % f->num_kinds;
    if (f->order[at] == SOAK_FAULT_DISKFULL && f->num_kinds > 1 && !ssd_onloads_seen(s) &&
        t < s->o.duration_s * 0.5) {
        uint32_t next = (f->turn + 1) % f->num_kinds;
        f->order[at] = f->order[next];
        f->order[next] = SOAK_FAULT_DISKFULL;
    }
    soak_fault_kind_t kind = f->order[at];
    uint32_t node = 0;
    double length = 0;
    if (strikes_handoff(s, kind) && !f->strike_armed) {
        /* Wait (at most 10 s) for the next ticket a prefill node gets. */
        f->strike_armed = 1;
        f->strike_node = SOAK_NO_NODE;
        f->strike_until = t + 10.0;
        return;
    }
    int struck = 0;
    if (f->strike_armed) {
        node_proc_t *pn = f->strike_node < s->o.nodes ? &s->nodes[f->strike_node] : NULL;
        if (!pn && t < f->strike_until)
            return;
        if (pn && t < f->strike_at)
            return;
        f->strike_armed = 0;
        uint32_t up = 0;
        for (uint32_t i = 0; i < s->o.nodes; i++)
            up += s->nodes[i].state == NODE_UP && s->nodes[i].pid > 0;
        struck = pn && pn->state == NODE_UP && pn->pid > 0 && up >= 2;
        node = struck ? f->strike_node : 0;
    }
    if (!struck && victim(s, kind, &node) != 0) {
        f->next_at = t + 0.5;
        return;
    }
    s->rep->handoff_fault_hits += struck;
    f->turn++;
    if (inject(s, kind, node, &length) != 0) {
        fprintf(stderr, "kvrt-soak: could not inject %s on node %u\n", soak_fault_names[kind],
                node);
        f->next_at = t + s->o.fault_interval_s;
        return;
    }
    record(s, t, kind, node);
    f->corrupt_base = corrupted(s);
    f->active = 1;
    f->kind = kind;
    f->node = node;
    f->heal_at = t + length;
}
