/*
 * sim_metrics.c - kvrt-sim's metrics file and endpoint. The context is read
 * only on the simulation's thread (inside the progress callback); the HTTP
 * thread serves copies.
 */
#include "sim_metrics.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int signo)
{
    (void)signo;
    stop_requested = 1;
}

int sim_metrics_open(sim_metrics_t *m, sim_progress_bar_t *bar, int port, bool to_file)
{
    *m = (sim_metrics_t){.bar = bar, .wanted = port >= 0 || to_file};
    if (port < 0)
        return 0;
    char error[256];
    if (metrics_http_start((uint16_t)port, &m->http, error, sizeof error) != 0) {
        fprintf(stderr, "kvrt-sim: --metrics-port: %s\n", error);
        return -1;
    }
    fprintf(stderr, "kvrt-sim: serving metrics at http://127.0.0.1:%u/metrics\n",
            metrics_http_port(m->http));
    return 0;
}

/* Renders into a buffer of the size kvrt asks for (counters cannot grow
 * between the two calls: this thread is the only one stepping). */
static char *render(kvrt_ctx_t *ctx, size_t *length_out)
{
    size_t length = 0;
    kvrt_status_t st = kvrt_metrics_render(ctx, NULL, 0, &length);
    if (st != KVRT_ERR_BUFFER_TOO_SMALL)
        return NULL;
    char *text = malloc(length + 1);
    if (text && kvrt_metrics_render(ctx, text, length + 1, length_out) != KVRT_OK) {
        free(text);
        text = NULL;
    }
    return text;
}

void sim_metrics_progress(void *metrics, const sim_progress_t *progress)
{
    sim_metrics_t *m = metrics;
    if (m->bar)
        sim_progress_bar_update(m->bar, progress);
    if (!m->wanted || !progress->ctx)
        return;
    size_t length = 0;
    char *text = render(progress->ctx, &length);
    if (!text) {
        m->failed = true;
        return;
    }
    if (m->http && metrics_http_publish(m->http, text, length) != 0)
        m->failed = true;
    free(m->latest);
    m->latest = text;
    m->latest_length = length;
}

static int write_file(const sim_metrics_t *m, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "kvrt-sim: --metrics-out %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t written = fwrite(m->latest, 1, m->latest_length, f);
    if (fclose(f) != 0 || written != m->latest_length) {
        fprintf(stderr, "kvrt-sim: --metrics-out %s: write failed\n", path);
        return -1;
    }
    return 0;
}

static void hold(double seconds)
{
    struct sigaction sa = {.sa_handler = on_stop_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct timespec slice = {.tv_nsec = 100 * 1000 * 1000};
    for (double waited = 0; waited < seconds && !stop_requested; waited += 0.1)
        nanosleep(&slice, NULL);
}

int sim_metrics_close(sim_metrics_t *m, const char *path, double hold_s)
{
    int rc = 0;
    if (m->failed || ((path || m->http) && !m->latest)) {
        fprintf(stderr, "kvrt-sim: rendering the metrics failed\n");
        rc = -1;
    }
    if (rc == 0 && path)
        rc = write_file(m, path);
    if (m->http && hold_s > 0)
        hold(hold_s);
    metrics_http_stop(m->http);
    free(m->latest);
    *m = (sim_metrics_t){0};
    return rc;
}
