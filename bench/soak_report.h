/*
 * soak_report.h - what a kvrt-soak run measured and whether every
 * invariant held: the readable summary, --json and --plot.
 */
#ifndef KVRT_BENCH_SOAK_REPORT_H
#define KVRT_BENCH_SOAK_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "sim_stats.h"
#include "soak_proto.h"

typedef enum soak_fault_kind {
    SOAK_FAULT_KILL, SOAK_FAULT_LINK, SOAK_FAULT_NETEM, SOAK_FAULT_SLOW,
    SOAK_FAULT_CORRUPT, SOAK_FAULT_DISKFULL, SOAK_FAULT_ETCD, SOAK_FAULT_STOP,
    SOAK_FAULT_LOSS, SOAK_FAULT_KINDS
} soak_fault_kind_t;

extern const char *const soak_fault_names[SOAK_FAULT_KINDS];

#define SOAK_SERIES_MAX 7200u  /* one bucket per second */
#define SOAK_EVENTS_MAX 4096u

typedef struct soak_bucket {
    uint64_t finished;
    uint64_t hit_tokens, prompt_tokens;
    sim_samples_t ttft_ms;
} soak_bucket_t;

typedef struct soak_event {
    double t;
    soak_fault_kind_t kind;
    uint32_t node;
} soak_event_t;

typedef struct soak_report {
    const char *network;            /* "netns" or "loopback (why)" */
    uint32_t nodes;
    double duration_s;
    uint64_t submitted, finished, aborted, failed, failed_node_lost, lost, hung;
    uint64_t ended_twice;
    uint64_t faults[SOAK_FAULT_KINDS];
    int available[SOAK_FAULT_KINDS];
    int enabled[SOAK_FAULT_KINDS];
    const char *why_not[SOAK_FAULT_KINDS];  /* why an unavailable kind is not (or NULL) */
    soak_node_counters_t counters;  /* all nodes, all generations */
    uint64_t leaked_blocks, leaked_registrations, outstanding_transfers, unfinished;
    uint64_t verify_failures, missing_reports, node_crashes;
    uint64_t max_rss_bytes, rss_limit_bytes;
    uint64_t directory_checks, stale_directory_nodes;
    uint64_t routed, events_applied, resyncs;
    /* Hand-offs: tickets the supervisor relayed to prefill nodes and could
     * not deliver, kill/stop faults that hit a node with prefills for
     * peers in progress, and hand-offs or sends left at the end. */
    uint64_t tickets_relayed, tickets_dropped, handoff_fault_hits, handoffs_left;
    uint64_t diskfull_ssd_onloads;  /* SSD blocks onloaded on a node with a full disk */
    uint64_t diskfull_ssd_errors;   /* its SSD tier's I/O errors meanwhile */
    uint64_t loss_dropped, loss_delayed;  /* packets the loss fault dropped, queued late */
    soak_bucket_t series[SOAK_SERIES_MAX];
    uint32_t num_buckets;
    soak_event_t events[SOAK_EVENTS_MAX];
    uint32_t num_events;
    sim_samples_t ttft_all;
} soak_report_t;

/* The second-long bucket of time t (seconds since start), or NULL. */
soak_bucket_t *soak_bucket_at(soak_report_t *r, double t);

/* 1 when every invariant held. Names each broken one on `out` when not NULL. */
int soak_report_ok(const soak_report_t *r, FILE *out);

void soak_report_print(const soak_report_t *r, FILE *out);
void soak_report_json(const soak_report_t *r, FILE *out);

/* Writes soak.json and the PNGs into dir with /usr/bin/python3 and
 * matplotlib; returns 0 or -1 with a message on stderr. */
int soak_report_plot(const soak_report_t *r, const char *dir, const char *script);

void soak_report_free(soak_report_t *r);

#endif /* KVRT_BENCH_SOAK_REPORT_H */
