/*
 * sim_workload_internal.h - the two kinds of kvrt-sim workload behind one
 * ops table (sim_workload_synthetic.c, sim_workload_trace.c); the public
 * calls in sim_workload.c dispatch through it.
 */
#ifndef KVRT_BENCH_SIM_WORKLOAD_INTERNAL_H
#define KVRT_BENCH_SIM_WORKLOAD_INTERNAL_H

#include "sim_workload.h"

typedef struct sim_workload_ops {
    void (*destroy)(sim_workload_t *workload);
    double (*next_arrival)(const sim_workload_t *workload);
    int (*pop)(sim_workload_t *workload, sim_request_t *out, char *error,
               size_t error_size);
    int (*done)(sim_workload_t *workload, const sim_request_t *request,
                double now_us, uint32_t generated, int completed);
    uint64_t (*planned)(const sim_workload_t *workload);
    int (*exhausted)(const sim_workload_t *workload);
} sim_workload_ops_t;

/* Each kind embeds this first. */
struct sim_workload {
    const sim_workload_ops_t *ops;
    uint64_t popped;
};

#endif /* KVRT_BENCH_SIM_WORKLOAD_INTERNAL_H */
