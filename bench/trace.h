/*
 * trace.h - request traces for kvrt-replay and kvrt-sim: Mooncake JSONL
 * (timestamp, input_length, output_length, hash_ids) and Azure LLM
 * inference CSV (TIMESTAMP, ContextTokens, GeneratedTokens).
 *
 * A trace is loaded whole into flat arrays (requests plus one shared
 * hash-id array), so replaying it touches no allocator. Every parse error
 * names the file, the 1-based line and the field: missing or mistyped
 * fields, text after a line's JSON object, numbers not written as plain
 * decimal integers (Azure counts: digits only, no sign or blank), lengths
 * outside 0..TRACE_MAX_TOKENS, hash_ids inconsistent with input_length
 * (Mooncake blocks are TRACE_BLOCK_TOKENS tokens: len(hash_ids) must equal
 * ceil(input_length / 512)), impossible dates, timestamps more than
 * TRACE_MAX_SPAN_MS from the first request's, a line longer than
 * TRACE_MAX_LINE_BYTES (the load stops there, so /dev/zero is refused
 * after reading that much), a truncated last line, malformed JSON or CSV.
 */
#ifndef KVRT_BENCH_TRACE_H
#define KVRT_BENCH_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Tokens per Mooncake trace block. */
#define TRACE_BLOCK_TOKENS 512u

/* Most prompt or output tokens of one request (16 Mi): far above any
 * model's context, low enough that a tool can hold one request's tokens. */
#define TRACE_MAX_TOKENS (1u << 24)

/* Longest line: 4 MiB holds a Mooncake line of TRACE_MAX_TOKENS / 512
 * hash ids written as 2^53 each, with room to spare. */
#define TRACE_MAX_LINE_BYTES (4u << 20)

/* Most milliseconds a request may lie before or after the first one
 * (366 days): beyond that a replay or simulation would only wait. */
#define TRACE_MAX_SPAN_MS (366.0 * 24 * 3600 * 1000)

typedef enum trace_format {
    TRACE_FORMAT_AUTO = 0,     /* by extension: .jsonl -> Mooncake, .csv -> Azure */
    TRACE_FORMAT_MOONCAKE = 1,
    TRACE_FORMAT_AZURE = 2
} trace_format_t;

typedef struct trace_request {
    double timestamp_ms;     /* since the first request of the trace */
    uint32_t input_length;   /* prompt tokens, 0..TRACE_MAX_TOKENS */
    uint32_t output_length;  /* generated tokens, 0..TRACE_MAX_TOKENS */
    uint32_t num_hash_ids;   /* ceil(input_length / 512) */
    /* Offset of this request's hash ids in trace_t.hash_ids. Azure traces
     * carry no prefix information: every block gets an id of its own. */
    uint64_t first_hash_id;
} trace_request_t;

typedef struct trace {
    trace_format_t format;
    trace_request_t *requests;
    size_t num_requests;
    int64_t *hash_ids;       /* all requests' ids, concatenated */
    size_t num_hash_ids;
    int has_prefix_info;     /* 1 for Mooncake, 0 for Azure */
} trace_t;

/* Parses a file name's format from its extension; TRACE_FORMAT_AUTO when
 * unknown. */
trace_format_t trace_format_from_name(const char *path);

/* Parses "mooncake", "azure" or "auto"; returns -1 for anything else. */
int trace_format_parse(const char *text, trace_format_t *format_out);

/*
 * trace_load - reads a whole trace. On success returns 0 and fills *trace_out
 * (free with trace_free). On failure returns -1, leaves *trace_out empty and
 * writes a message of the form "<path>:<line>: <what is wrong>" to
 * error[0..error_size).
 */
int trace_load(const char *path, trace_format_t format, trace_t *trace_out,
               char *error, size_t error_size);

/* Frees what trace_load allocated; safe on an empty or zeroed trace. */
void trace_free(trace_t *trace);

/* The hash ids of request i. */
static inline const int64_t *trace_request_hash_ids(const trace_t *trace, size_t i)
{
    return trace->hash_ids + trace->requests[i].first_hash_id;
}

#endif /* KVRT_BENCH_TRACE_H */
