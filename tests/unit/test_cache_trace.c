/*
 * test_cache_trace.c - the trace loader shared by kvrt-replay and kvrt-sim:
 * the shipped traces load with the published sizes, and every kind of bad
 * input is refused with a message naming the file, the line and the field:
 * trailing text, numbers in odd spellings, impossible dates, values out of
 * range, oversized lines (an endless /dev/zero among them).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_helpers.h"
#include "trace.h"

static char dir[] = "/tmp/kvrt-trace-XXXXXX";
static char path[512];
static char written[64][512];
static int num_written;

static void setup(void) { cr_assert_not_null(mkdtemp(dir)); }
static void teardown(void)
{
    for (int i = 0; i < num_written; i++)
        unlink(written[i]);
    rmdir(dir);
}
TestSuite(cache_trace, .init = setup, .fini = teardown);

static const char *write_file(const char *name, const char *text)
{
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    if (num_written < 64)
        snprintf(written[num_written++], sizeof(written[0]), "%s", path);
    return path;
}

/* Loads text as a file called name and expects an error containing
 * "<file>:<line>:" and `what`. */
static void expect_error(const char *name, const char *text, int line, const char *what)
{
    const char *p = write_file(name, text);
    trace_t t;
    char error[512], where[600];
    cr_assert_eq(trace_load(p, TRACE_FORMAT_AUTO, &t, error, sizeof(error)), -1,
                 "accepted: %s", text);
    cr_assert_null(t.requests);
    snprintf(where, sizeof(where), "%s:%d: ", p, line);
    cr_assert(strstr(error, where) == error, "'%s' does not start with '%s'", error, where);
    cr_assert(strstr(error, what), "'%s' does not say '%s'", error, what);
}

#define OK1 "{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 5, \"hash_ids\": [1, 2]}\n"

Test(cache_trace, shipped_traces_load_with_their_published_sizes)
{
    trace_t t;
    char error[512];
    cr_assert_eq(trace_load(KVRT_TRACE_DIR "/conversation_trace.jsonl", TRACE_FORMAT_AUTO, &t,
                            error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(t.num_requests, 12031);
    cr_assert_eq(t.num_hash_ids, 288500);
    cr_assert_eq(t.format, TRACE_FORMAT_MOONCAKE);
    cr_assert_eq(trace_request_hash_ids(&t, 0)[0], 0);
    trace_free(&t);
    cr_assert_eq(trace_load(KVRT_TRACE_DIR "/AzureLLMInferenceTrace_code.csv", TRACE_FORMAT_AUTO,
                            &t, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(t.num_requests, 8819);
    cr_assert_eq(t.requests[0].input_length, 4808);
    cr_assert_eq(t.requests[0].num_hash_ids, 10);
    cr_assert_eq(t.requests[0].timestamp_ms, 0);
    /* 18:17:03.97996 -> 18:17:04.03196: 52 ms later. */
    cr_assert(t.requests[1].timestamp_ms > 51.9 && t.requests[1].timestamp_ms < 52.1,
              "%f", t.requests[1].timestamp_ms);
    cr_assert_eq(t.has_prefix_info, 0);
    trace_free(&t);
}

Test(cache_trace, a_small_good_trace_loads)
{
    const char *p = write_file("good.jsonl", OK1 "\n"
                               "{\"timestamp\": 7.5, \"input_length\": 512, \"output_length\": 0, "
                               "\"hash_ids\": [1]}");
    trace_t t;
    char error[256];
    cr_assert_eq(trace_load(p, TRACE_FORMAT_MOONCAKE, &t, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(t.num_requests, 2);
    cr_assert_eq(t.requests[1].timestamp_ms, 7.5);
    cr_assert_eq(trace_request_hash_ids(&t, 1)[0], 1);
    trace_free(&t);
}

Test(cache_trace, bad_mooncake_lines_name_their_line)
{
    expect_error("a.jsonl", OK1 "{\"timestamp\": 0, \"output_length\": 1, \"hash_ids\": []}\n", 2,
                 "missing field \"input_length\"");
    expect_error("b.jsonl", OK1 OK1 "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 1}\n",
                 3, "missing field \"hash_ids\"");
    expect_error("c.jsonl", "{\"timestamp\": 0, \"input_length\": -5, \"output_length\": 1, "
                            "\"hash_ids\": []}\n", 1, "negative");
    expect_error("d.jsonl", "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": -1, "
                            "\"hash_ids\": [1]}\n", 1, "negative");
    expect_error("e.jsonl", OK1 "{\"timestamp\": 0, \"input_length\": 1025, \"output_length\": 1, "
                                "\"hash_ids\": [1, 2]}\n", 2, "expected ceil(1025 / 512) = 3");
    expect_error("f.jsonl", OK1 "{\"timestamp\": 0, \"input_length\": 600, \"outp", 2,
                 "truncated line");
    expect_error("g.jsonl", OK1 "{\"timestamp\": 0,, }\n" OK1, 2, "malformed JSON");
    expect_error("h.jsonl", "[1, 2, 3]\n", 1, "JSON object");
    expect_error("i.jsonl", "{\"timestamp\": \"noon\", \"input_length\": 5, \"output_length\": 1, "
                            "\"hash_ids\": [1]}\n", 1, "timestamp");
    expect_error("j.jsonl", "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, "
                            "\"hash_ids\": [\"x\"]}\n", 1, "hash_ids[0]");
    expect_error("k.jsonl", "{\"timestamp\": 0, \"input_length\": 5.5, \"output_length\": 1, "
                            "\"hash_ids\": [1]}\n", 1, "not an integer");
    expect_error("l.jsonl", "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, "
                            "\"hash_ids\": 7}\n", 1, "not an array");
}

Test(cache_trace, bad_azure_rows_name_their_line)
{
    const char *head = "TIMESTAMP,ContextTokens,GeneratedTokens\n";
    char text[512];
    expect_error("a.csv", "when,what\n", 1, "header");
    snprintf(text, sizeof(text), "%s2023-11-16 18:17:03.97,4808,10\n2023-11-16 18:17:04,31", head);
    expect_error("b.csv", text, 3, "truncated line");
    snprintf(text, sizeof(text), "%s2023-11-16 18:17:03.97,-4,10\n", head);
    expect_error("c.csv", text, 2, "negative");
    snprintf(text, sizeof(text), "%s2023-11-16 18:17:03.97,4,-10\n", head);
    expect_error("d.csv", text, 2, "negative");
    snprintf(text, sizeof(text), "%s2023-11-16 18:17:03.97,4,10\nyesterday,4,10\n", head);
    expect_error("e.csv", text, 3, "TIMESTAMP");
    snprintf(text, sizeof(text), "%s2023-11-16 18:17:03.97,4x,10\n", head);
    expect_error("f.csv", text, 2, "ContextTokens");
    snprintf(text, sizeof(text), "%s2023-11-16 18:17:03.97,4,10,3\n", head);
    expect_error("g.csv", text, 2, "found 4");
}

Test(cache_trace, unusable_files_are_refused)
{
    trace_t t;
    char error[256];
    cr_assert_eq(trace_load("/nonexistent/x.jsonl", TRACE_FORMAT_AUTO, &t, error, sizeof(error)), -1);
    cr_assert(strstr(error, "/nonexistent/x.jsonl: cannot open"), "%s", error);
    const char *p = write_file("x.txt", OK1);
    cr_assert_eq(trace_load(p, TRACE_FORMAT_AUTO, &t, error, sizeof(error)), -1);
    cr_assert(strstr(error, "unknown trace format"), "%s", error);
    cr_assert_eq(trace_load(p, TRACE_FORMAT_MOONCAKE, &t, error, sizeof(error)), 0, "%s", error);
    trace_free(&t);
    p = write_file("empty.jsonl", "\n\n");
    cr_assert_eq(trace_load(p, TRACE_FORMAT_AUTO, &t, error, sizeof(error)), -1);
    cr_assert(strstr(error, "no requests"), "%s", error);
    trace_format_t f;
    cr_assert_eq(trace_format_parse("azure", &f), 0);
    cr_assert_eq(f, TRACE_FORMAT_AZURE);
    cr_assert_eq(trace_format_parse("parquet", &f), -1);
}

Test(cache_trace, text_after_a_json_object_is_refused)
{
    expect_error("trail1.jsonl", OK1 "{\"timestamp\": 1, \"input_length\": 1, "
                                     "\"output_length\": 1, \"hash_ids\": [3]} garbage\n",
                 2, "unexpected text after the JSON object at column 73");
    expect_error("trail2.jsonl", "{\"timestamp\": 1, \"input_length\": 1, \"output_length\": 1, "
                                 "\"hash_ids\": [3]}{\"a\":1}\n", 1,
                 "unexpected text after the JSON object");
    /* Blanks after the object are no garbage. */
    const char *p = write_file("trail3.jsonl", "{\"timestamp\": 1, \"input_length\": 1, "
                                               "\"output_length\": 1, \"hash_ids\": [3]} \t\r\n");
    trace_t t;
    char error[512];
    cr_assert_eq(trace_load(p, TRACE_FORMAT_AUTO, &t, error, sizeof(error)), 0, "%s", error);
    trace_free(&t);
}

Test(cache_trace, values_out_of_range_name_their_field)
{
    expect_error("r1.jsonl", OK1 "{\"timestamp\": 1, \"input_length\": 1, "
                                 "\"output_length\": 4294967295, \"hash_ids\": [3]}\n",
                 2, "field \"output_length\" is not an integer in 0..16777216");
    expect_error("r2.jsonl", "{\"timestamp\": 1, \"input_length\": 16777217, "
                             "\"output_length\": 1, \"hash_ids\": []}\n",
                 1, "field \"input_length\" is not an integer in 0..16777216");
    expect_error("r3.jsonl", OK1 "{\"timestamp\": 1e308, \"input_length\": 1, "
                                 "\"output_length\": 1, \"hash_ids\": [3]}\n",
                 2, "field \"timestamp\" lies");
    const char *head = "TIMESTAMP,ContextTokens,GeneratedTokens\n";
    char text[512];
    snprintf(text, sizeof(text), "%s2023-11-16 18:17:03,4,10\n2025-11-16 18:17:03,4,10\n", head);
    expect_error("r4.csv", text, 3, "field \"TIMESTAMP\" lies 731 days");
    snprintf(text, sizeof(text), "%s2023-11-16 18:17:03,4,16777217\n", head);
    expect_error("r5.csv", text, 2, "GeneratedTokens \"16777217\" is not a decimal integer");
}

Test(cache_trace, azure_fields_are_plain_dates_and_digits)
{
    static const struct { const char *row; const char *what; } bad[] = {
        {"2023-11-16 18:17:nan,4,10", "TIMESTAMP \"2023-11-16 18:17:nan\""},
        {"2023-11-16 18:17:0x1p3,4,10", "TIMESTAMP"},
        {"2023-11-16 18:17:inf,4,10", "TIMESTAMP"},
        {"2023-02-31 18:17:03,4,10", "TIMESTAMP \"2023-02-31 18:17:03\""},
        {"2023-02-29 00:00:00,4,10", "TIMESTAMP"},
        {"2023-11-16 24:00:00,4,10", "TIMESTAMP"},
        {"2023-11-16 18:17:03.,4,10", "TIMESTAMP"},
        {"2023-11-16 18:17:03.5x,4,10", "TIMESTAMP"},
        {"2023-11-16  8:17:03,4,10", "TIMESTAMP"},
        {"2023-11-16 18:17:03, 10,10", "ContextTokens \" 10\""},
        {"2023-11-16 18:17:03,+10,10", "ContextTokens \"+10\""},
        {"2023-11-16 18:17:03,10,0x10", "GeneratedTokens \"0x10\""},
        {"2023-11-16 18:17:03,10,10 ", "GeneratedTokens \"10 \""},
        {"2023-11-16 18:17:03,,10", "ContextTokens \"\""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char name[32], text[256];
        snprintf(name, sizeof(name), "z%zu.csv", i);
        snprintf(text, sizeof(text), "TIMESTAMP,ContextTokens,GeneratedTokens\n%s\n", bad[i].row);
        expect_error(name, text, 2, bad[i].what);
    }
    /* A NaN in the first row would make every later timestamp NaN. */
    expect_error("nan-first.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                  "2023-11-16 18:17:nan,4,10\n2023-11-16 18:17:04,4,10\n",
                 2, "TIMESTAMP");
    /* Leap days that exist, and fractions of any length, load. */
    const char *p = write_file("leap.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                           "2024-02-29 23:59:59.5,0,0\n"
                                           "2000-02-29 23:59:59,7,1\n");
    trace_t t;
    char error[512];
    cr_assert_eq(trace_load(p, TRACE_FORMAT_AUTO, &t, error, sizeof(error)), -1);
    cr_assert(strstr(error, "lies"), "2000 is 24 years before 2024: %s", error);
    p = write_file("leap2.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                "2024-02-29 23:59:59.5,0,0\n2024-03-01 00:00:00.25,7,1");
    cr_assert_eq(trace_load(p, TRACE_FORMAT_AUTO, &t, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(t.num_requests, 2);
    cr_assert_eq(t.requests[1].timestamp_ms, 750.0);
    cr_assert_eq(t.requests[0].num_hash_ids, 0, "0 prompt tokens: no blocks");
    trace_free(&t);
}

Test(cache_trace, an_oversized_line_stops_the_load_there)
{
    trace_t t;
    char error[512];
    /* /dev/zero never ends a line: refused after TRACE_MAX_LINE_BYTES. */
    cr_assert_eq(trace_load("/dev/zero", TRACE_FORMAT_MOONCAKE, &t, error, sizeof(error)), -1);
    cr_assert(strstr(error, "/dev/zero:1: line longer than 4194304 bytes") == error, "%s", error);
    cr_assert_null(t.requests);

    size_t big = TRACE_MAX_LINE_BYTES + 10;
    char *text = malloc(sizeof(OK1) + big + 2);
    cr_assert_not_null(text);
    strcpy(text, OK1);
    memset(text + strlen(OK1), ' ', big);
    strcpy(text + strlen(OK1) + big, "\n");
    expect_error("long.jsonl", text, 2, "line longer than");
    free(text);
}

Test(cache_trace, a_request_of_zero_prompt_tokens_loads)
{
    const char *p = write_file("zero.jsonl", "{\"timestamp\": 0, \"input_length\": 0, "
                                             "\"output_length\": 3, \"hash_ids\": []}\n");
    trace_t t;
    char error[256];
    cr_assert_eq(trace_load(p, TRACE_FORMAT_AUTO, &t, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(t.num_requests, 1);
    cr_assert_eq(t.num_hash_ids, 0);
    cr_assert_eq(t.requests[0].output_length, 3);
    trace_free(&t);
}
