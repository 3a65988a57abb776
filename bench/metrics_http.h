/*
 * metrics_http.h - a minimal HTTP/1.0 responder that serves one text
 * document, the latest metrics snapshot, at GET /metrics on 127.0.0.1.
 *
 * Why hand-written: kvrt-sim needs one read-only endpoint on loopback for a
 * Prometheus scraper; Debian 12's libmicrohttpd would add a build
 * dependency for about a hundred lines. Requests are served one at a time,
 * each bounded in size (8 KiB) and time (2 s), by one thread that never
 * touches kvrt: the simulator renders snapshots on its own thread and
 * publishes them here.
 */
#ifndef KVRT_BENCH_METRICS_HTTP_H
#define KVRT_BENCH_METRICS_HTTP_H

#include <stddef.h>
#include <stdint.h>

typedef struct metrics_http metrics_http_t;

/* Listens on 127.0.0.1:port (0 picks a free port) and starts serving an
 * empty document. Returns 0, or -1 with a message in error. */
int metrics_http_start(uint16_t port, metrics_http_t **server_out, char *error,
                       size_t error_size);
/* The port actually bound. */
uint16_t metrics_http_port(const metrics_http_t *server);
/* Replaces the document served (copied). Returns -1 when out of memory (the
 * previous document stays). Safe from any thread. */
int metrics_http_publish(metrics_http_t *server, const char *text, size_t length);
/* Stops the thread, closes the socket, frees. NULL is a no-op. */
void metrics_http_stop(metrics_http_t *server);

#endif /* KVRT_BENCH_METRICS_HTTP_H */
