/*
 * A minimal stand-in for Criterion's test API, used only in ThreadSanitizer
 * builds (scripts/test --tsan). Criterion itself cannot start under TSan:
 * its boxfort arena maps shared memory at random fixed addresses in ranges
 * TSan reserves, and aborts with "Could not initialize inheritable arena"
 * (upstream Criterion issue #274). This header provides the subset of the
 * API kvrt's tests use, with the same meaning; runner.c runs each test in a
 * forked child with its suite's init/fini and timeout, like Criterion does.
 * Tests compile unchanged against either.
 */
#ifndef KVRT_TSAN_CRITERION_H
#define KVRT_TSAN_CRITERION_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

typedef struct kvrt_tsan_opts {
    void (*init)(void);
    void (*fini)(void);
    double timeout;
    bool disabled;
    const char *description;
} kvrt_tsan_opts_t;

typedef struct kvrt_tsan_test {
    const char *suite;
    const char *name;
    void (*fn)(void);
    kvrt_tsan_opts_t opts;
    struct kvrt_tsan_test *next;
} kvrt_tsan_test_t;

typedef struct kvrt_tsan_suite {
    const char *name;
    kvrt_tsan_opts_t opts;
    struct kvrt_tsan_suite *next;
} kvrt_tsan_suite_t;

void kvrt_tsan_register_test(kvrt_tsan_test_t *test);
void kvrt_tsan_register_suite(kvrt_tsan_suite_t *suite);
/* No format attribute: the message is optional, so fmt may be "". */
void kvrt_tsan_check(bool ok, const char *expr, const char *file, int line,
                     const char *fmt, ...);
void kvrt_tsan_skip(const char *fmt, ...);
void kvrt_tsan_log(const char *fmt, ...);

#define Test(suite, name, ...)                                                   \
    static void suite##_##name##_impl(void);                                     \
    static kvrt_tsan_test_t suite##_##name##_test = {                            \
        #suite, #name, suite##_##name##_impl, {__VA_ARGS__}, NULL};              \
    __attribute__((constructor)) static void suite##_##name##_register(void)     \
    {                                                                            \
        kvrt_tsan_register_test(&suite##_##name##_test);                         \
    }                                                                            \
    static void suite##_##name##_impl(void)

#define TestSuite(suite, ...)                                                    \
    static kvrt_tsan_suite_t suite##_suite_ = {#suite, {__VA_ARGS__}, NULL};     \
    __attribute__((constructor)) static void suite##_suite_register(void)       \
    {                                                                            \
        kvrt_tsan_register_suite(&suite##_suite_);                               \
    }

/* The message arguments are optional, as in Criterion. */
#define cr_assert(cond, ...)                                                     \
    kvrt_tsan_check(!!(cond), #cond, __FILE__, __LINE__, "" __VA_ARGS__)
#define cr_assert_fail(...) cr_assert(0, __VA_ARGS__)
#define cr_assert_eq(a, b, ...) cr_assert((a) == (b), __VA_ARGS__)
#define cr_assert_neq(a, b, ...) cr_assert((a) != (b), __VA_ARGS__)
#define cr_assert_lt(a, b, ...) cr_assert((a) < (b), __VA_ARGS__)
#define cr_assert_leq(a, b, ...) cr_assert((a) <= (b), __VA_ARGS__)
#define cr_assert_gt(a, b, ...) cr_assert((a) > (b), __VA_ARGS__)
#define cr_assert_geq(a, b, ...) cr_assert((a) >= (b), __VA_ARGS__)
#define cr_assert_null(p, ...) cr_assert((p) == NULL, __VA_ARGS__)
#define cr_assert_not_null(p, ...) cr_assert((p) != NULL, __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...) cr_assert(strcmp((a), (b)) == 0, __VA_ARGS__)
#define cr_skip_test(...) kvrt_tsan_skip("" __VA_ARGS__)
#define cr_log_info(...) kvrt_tsan_log("" __VA_ARGS__)

#endif /* KVRT_TSAN_CRITERION_H */
