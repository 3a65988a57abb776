/*
 * trace.c - loads Mooncake JSONL and Azure CSV request traces (trace.h).
 *
 * The file is read line by line, no line longer than TRACE_MAX_LINE_BYTES;
 * each line is checked completely before it is added, and the first
 * problem ends the load with "<path>:<line>: <field and what is wrong>". A
 * last line without a newline is accepted when it parses (the Azure files
 * end that way) and reported as truncated when it does not.
 */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

typedef struct loader {
    const char *path;
    size_t line;       /* 1-based number of the line being parsed */
    bool last_unterminated;
    char *error;
    size_t error_size;
    trace_t trace;
    size_t requests_capacity;
    size_t ids_capacity;
    int64_t next_unique_id; /* Azure: every block is an id of its own */
    double first_timestamp;
    const char *timestamp_field; /* its name in this format, for messages */
} loader_t;

static int fail(loader_t *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(loader_t *l, const char *fmt, ...)
{
    int n = l->line ? snprintf(l->error, l->error_size, "%s:%zu: ", l->path, l->line)
                    : snprintf(l->error, l->error_size, "%s: ", l->path);
    if (n >= 0 && (size_t)n < l->error_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(l->error + n, l->error_size - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

trace_format_t trace_format_from_name(const char *path)
{
    const char *dot = strrchr(path, '.');
    if (dot && (!strcmp(dot, ".jsonl") || !strcmp(dot, ".json")))
        return TRACE_FORMAT_MOONCAKE;
    if (dot && !strcmp(dot, ".csv"))
        return TRACE_FORMAT_AZURE;
    return TRACE_FORMAT_AUTO;
}

int trace_format_parse(const char *text, trace_format_t *format_out)
{
    static const struct { const char *name; trace_format_t format; } names[] = {
        {"auto", TRACE_FORMAT_AUTO}, {"mooncake", TRACE_FORMAT_MOONCAKE},
        {"azure", TRACE_FORMAT_AZURE}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(text, names[i].name)) {
            *format_out = names[i].format;
            return 0;
        }
    return -1;
}

void trace_free(trace_t *trace)
{
    free(trace->requests);
    free(trace->hash_ids);
    memset(trace, 0, sizeof(*trace));
}

/* ---- growing the arrays (load time only) -------------------------------- */

static int reserve(loader_t *l, size_t more_ids)
{
    trace_t *t = &l->trace;
    if (t->num_requests == l->requests_capacity) {
        size_t cap = l->requests_capacity ? 2 * l->requests_capacity : 1024;
        trace_request_t *r = realloc(t->requests, cap * sizeof(*r));
        if (!r)
            return fail(l, "out of memory for %zu requests", cap);
        t->requests = r;
        l->requests_capacity = cap;
    }
    if (t->num_hash_ids + more_ids > l->ids_capacity) {
        size_t cap = l->ids_capacity ? l->ids_capacity : 16384;
        while (cap < t->num_hash_ids + more_ids)
            cap *= 2;
        int64_t *ids = realloc(t->hash_ids, cap * sizeof(*ids));
        if (!ids)
            return fail(l, "out of memory for %zu hash ids", cap);
        t->hash_ids = ids;
        l->ids_capacity = cap;
    }
    return 0;
}

static uint32_t blocks_for(uint32_t input_length)
{
    return (uint32_t)(((uint64_t)input_length + TRACE_BLOCK_TOKENS - 1) / TRACE_BLOCK_TOKENS);
}

/* Appends a request; ids NULL means fresh unique ids (Azure). */
static int add_request(loader_t *l, double timestamp_ms, uint32_t input, uint32_t output,
                       const int64_t *ids, uint32_t num_ids)
{
    trace_t *t = &l->trace;
    if (t->num_requests == 0)
        l->first_timestamp = timestamp_ms;
    if (fabs(timestamp_ms - l->first_timestamp) > TRACE_MAX_SPAN_MS)
        return fail(l, "field \"%s\" lies %.0f days from the first request's; a trace may "
                       "span at most %.0f days", l->timestamp_field,
                    fabs(timestamp_ms - l->first_timestamp) / 86400000.0,
                    TRACE_MAX_SPAN_MS / 86400000.0);
    if (reserve(l, num_ids) != 0)
        return -1;
    t->requests[t->num_requests++] = (trace_request_t){
        .timestamp_ms = timestamp_ms - l->first_timestamp,
        .input_length = input,
        .output_length = output,
        .num_hash_ids = num_ids,
        .first_hash_id = t->num_hash_ids,
    };
    for (uint32_t i = 0; i < num_ids; i++)
        t->hash_ids[t->num_hash_ids++] = ids ? ids[i] : l->next_unique_id++;
    return 0;
}

/* ---- Mooncake JSONL -------------------------------------------------------- */

/* A token count: an integer in 0..TRACE_MAX_TOKENS. */
static int json_count(loader_t *l, const cJSON *obj, const char *name, uint32_t *value_out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!item)
        return fail(l, "missing field \"%s\"", name);
    if (!cJSON_IsNumber(item))
        return fail(l, "field \"%s\" is not a number", name);
    double v = item->valuedouble;
    if (v < 0)
        return fail(l, "field \"%s\" is negative (%g)", name, v);
    if (v != floor(v) || v > TRACE_MAX_TOKENS)
        return fail(l, "field \"%s\" is not an integer in 0..%u (%g)", name, TRACE_MAX_TOKENS,
                    v);
    *value_out = (uint32_t)v;
    return 0;
}

static int mooncake_line(loader_t *l, const char *text, size_t len)
{
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!obj) {
        size_t column = end ? (size_t)(end - text) + 1 : 0;
        return l->last_unterminated
                   ? fail(l, "truncated line: the file ends inside a JSON object (column %zu)",
                          column)
                   : fail(l, "malformed JSON near column %zu", column);
    }
    int rc = -1;
    uint32_t input, output;
    const cJSON *tsv = cJSON_GetObjectItemCaseSensitive(obj, "timestamp");
    size_t used = (size_t)(end - text);
    if (used + strspn(end, " \t\r") != len) {
        fail(l, "unexpected text after the JSON object at column %zu", used + 1);
    } else if (!cJSON_IsObject(obj)) {
        fail(l, "a line must be a JSON object");
    } else if (!tsv) {
        fail(l, "missing field \"timestamp\"");
    } else if (!cJSON_IsNumber(tsv) || tsv->valuedouble < 0 || !isfinite(tsv->valuedouble)) {
        fail(l, "field \"timestamp\" must be a non-negative number of milliseconds");
    } else if (json_count(l, obj, "input_length", &input) == 0 &&
               json_count(l, obj, "output_length", &output) == 0) {
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(obj, "hash_ids");
        uint32_t want = blocks_for(input);
        if (!ids) {
            fail(l, "missing field \"hash_ids\"");
        } else if (!cJSON_IsArray(ids)) {
            fail(l, "field \"hash_ids\" is not an array");
        } else if ((uint64_t)cJSON_GetArraySize(ids) != want) {
            fail(l, "%d hash_ids for input_length %u: expected ceil(%u / %u) = %u",
                 cJSON_GetArraySize(ids), input, input, TRACE_BLOCK_TOKENS, want);
        } else if (reserve(l, want) == 0) {
            int64_t *dst = l->trace.hash_ids + l->trace.num_hash_ids;
            uint32_t i = 0;
            const cJSON *id;
            cJSON_ArrayForEach(id, ids) {
                double v = cJSON_IsNumber(id) ? id->valuedouble : -1;
                if (v < 0 || v != floor(v) || v > 9007199254740992.0)
                    break;
                dst[i++] = (int64_t)v;
            }
            if (i != want)
                fail(l, "hash_ids[%u] is not a non-negative integer", i);
            else
                rc = add_request(l, tsv->valuedouble, input, output, dst, want);
        }
    }
    cJSON_Delete(obj);
    return rc;
}

/* ---- Azure CSV ---------------------------------------------------------------- */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil), so no time zone or libc state is involved. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* n decimal digits at text; -1 when any is not a digit. */
static int digits(const char *text, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (text[i] < '0' || text[i] > '9')
            return -1;
        v = v * 10 + (text[i] - '0');
    }
    return v;
}

static bool leap_year(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

/* Exactly "YYYY-MM-DD HH:MM:SS" with an optional ".fraction" of digits, a
 * date that exists (2023-02-29 does not) and a time of day. */
static int parse_wall_clock(const char *text, double *ms_out)
{
    static const int month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (strlen(text) < 19 || text[4] != '-' || text[7] != '-' || text[10] != ' ' ||
        text[13] != ':' || text[16] != ':')
        return -1;
    int y = digits(text, 4), mo = digits(text + 5, 2), d = digits(text + 8, 2);
    int h = digits(text + 11, 2), mi = digits(text + 14, 2), sec = digits(text + 17, 2);
    if (y < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59 ||
        sec < 0 || sec > 59)
        return -1;
    if (d > month_days[mo - 1] + (mo == 2 && leap_year(y)))
        return -1;
    double fraction = 0, scale = 0.1;
    const char *p = text + 19;
    if (*p == '.') {
        if (!p[1])
            return -1;
        for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
            fraction += (*p - '0') * scale;
    }
    if (*p)
        return -1;
    double days = (double)days_from_civil(y, (unsigned)mo, (unsigned)d);
    *ms_out = ((days * 24 + h) * 60 + mi) * 60000.0 + (sec + fraction) * 1000.0;
    return 0;
}

/* A count written as decimal digits only, 0..TRACE_MAX_TOKENS: no sign, no
 * blank, no base prefix. -2 when negative. */
static int parse_count(const char *text, uint32_t *value_out)
{
    if (*text == '-')
        return -2;
    size_t n = strspn(text, "0123456789");
    if (n == 0 || text[n] != '\0' || n > 9)
        return -1;
    unsigned long v = strtoul(text, NULL, 10);
    if (v > TRACE_MAX_TOKENS)
        return -1;
    *value_out = (uint32_t)v;
    return 0;
}

static int azure_line(loader_t *l, char *text, size_t len)
{
    if (len && text[len - 1] == '\r')
        text[--len] = '\0';
    char *fields[4];
    int n = 0;
    for (char *p = text; p && n < 4; n++) {
        fields[n] = p;
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        p = comma ? comma + 1 : NULL;
    }
    if (n != 3)
        return fail(l, "expected 3 comma-separated fields (TIMESTAMP,ContextTokens,"
                       "GeneratedTokens), found %d%s", n,
                    n < 3 && l->last_unterminated ? " (truncated line)" : "");
    double ts;
    uint32_t input, output;
    if (parse_wall_clock(fields[0], &ts) != 0)
        return fail(l, "TIMESTAMP \"%s\" is not a date and time YYYY-MM-DD HH:MM:SS[.fraction]",
                    fields[0]);
    int rc = parse_count(fields[1], &input);
    if (rc != 0)
        return fail(l, "ContextTokens \"%s\" is %s%u", fields[1],
                    rc == -2 ? "negative; want " : "not a decimal integer in 0..",
                    TRACE_MAX_TOKENS);
    rc = parse_count(fields[2], &output);
    if (rc != 0)
        return fail(l, "GeneratedTokens \"%s\" is %s%u", fields[2],
                    rc == -2 ? "negative; want " : "not a decimal integer in 0..",
                    TRACE_MAX_TOKENS);
    return add_request(l, ts, input, output, NULL, blocks_for(input));
}

static int azure_header(loader_t *l, const char *text, size_t len)
{
    static const char expected[] = "TIMESTAMP,ContextTokens,GeneratedTokens";
    if (len && text[len - 1] == '\r')
        len--;
    if (len != sizeof(expected) - 1 || memcmp(text, expected, len) != 0)
        return fail(l, "expected the header \"%s\"", expected);
    return 0;
}

/* ---- the file ------------------------------------------------------------------- */

/* Reads the next line into *line (without its newline, NUL-terminated),
 * growing it up to TRACE_MAX_LINE_BYTES. Returns 1 with *has_newline set,
 * 0 at the end of the file, -1 after reporting an error. */
static int read_line(loader_t *l, FILE *f, char **line, size_t *capacity, size_t *len_out,
                     bool *has_newline)
{
    size_t len = 0;
    int c = 0;
    while ((c = getc_unlocked(f)) != EOF && c != '\n') {
        if (len == TRACE_MAX_LINE_BYTES)
            return fail(l, "line longer than %u bytes", TRACE_MAX_LINE_BYTES);
        if (len + 1 >= *capacity) {
            size_t cap = 2 * *capacity;
            char *bigger = realloc(*line, cap);
            if (!bigger)
                return fail(l, "out of memory for a line of %zu bytes", cap);
            *line = bigger;
            *capacity = cap;
        }
        (*line)[len++] = (char)c;
    }
    if (ferror(f))
        return fail(l, "read error: %s", strerror(errno));
    if (c == EOF && len == 0)
        return 0;
    (*line)[len] = '\0';
    *len_out = len;
    *has_newline = c == '\n';
    return 1;
}

int trace_load(const char *path, trace_format_t format, trace_t *trace_out, char *error,
               size_t error_size)
{
    loader_t l = {.path = path, .error = error, .error_size = error_size};
    if (error_size)
        error[0] = '\0';
    if (format == TRACE_FORMAT_AUTO)
        format = trace_format_from_name(path);
    if (format == TRACE_FORMAT_AUTO)
        return fail(&l, "unknown trace format: name it .jsonl (Mooncake) or .csv (Azure), "
                        "or give the format");
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(&l, "cannot open: %s", strerror(errno));
    l.timestamp_field = format == TRACE_FORMAT_MOONCAKE ? "timestamp" : "TIMESTAMP";
    size_t capacity = 4096, len = 0;
    char *line = malloc(capacity);
    if (!line) {
        fclose(f);
        return fail(&l, "out of memory");
    }
    bool has_newline = false;
    int rc = 0, got;
    for (l.line = 1; rc == 0; l.line++) {
        got = read_line(&l, f, &line, &capacity, &len, &has_newline);
        if (got <= 0) {
            rc = got;
            break;
        }
        l.last_unterminated = !has_newline;
        bool blank = strspn(line, " \t\r") == len;
        if (strlen(line) != len)
            rc = fail(&l, "NUL byte inside the line");
        else if (format == TRACE_FORMAT_AZURE && l.line == 1)
            rc = azure_header(&l, line, len);
        else if (!blank)
            rc = format == TRACE_FORMAT_MOONCAKE ? mooncake_line(&l, line, len)
                                                 : azure_line(&l, line, len);
    }
    free(line);
    fclose(f);
    if (rc == 0 && l.trace.num_requests == 0) {
        l.line = 0;
        rc = fail(&l, "no requests in the trace");
    }
    if (rc != 0) {
        trace_free(&l.trace);
        memset(trace_out, 0, sizeof(*trace_out));
        return -1;
    }
    l.trace.format = format;
    l.trace.has_prefix_info = format == TRACE_FORMAT_MOONCAKE;
    *trace_out = l.trace;
    return 0;
}
