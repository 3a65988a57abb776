/*
 * test_skip.h - how a skipped test reaches ctest's summary.
 *
 * Tests skip with cr_skip_test("reason"). The binary's main (Criterion's,
 * in support/criterion_main.c, or tests/tsan_runner/runner.c under
 * ThreadSanitizer) then exits with KVRT_TEST_SKIPPED when no test failed,
 * and kvrt_add_test registers that code as the test's SKIP_RETURN_CODE.
 * 77 is the automake convention ctest users know.
 */
#ifndef KVRT_TEST_SKIP_H
#define KVRT_TEST_SKIP_H

#define KVRT_TEST_SKIPPED 77

#endif /* KVRT_TEST_SKIP_H */
