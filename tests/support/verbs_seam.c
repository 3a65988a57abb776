/*
 * verbs_seam.c - the test programs' way to run the verbs backend over
 * another ops table (the software device) or with smaller queues. Linked
 * into test programs only: its definitions of kvrt_verbs_current_ops and
 * kvrt_verbs_current_tuning override the library's weak ones, which always
 * answer libibverbs and the defaults.
 */
#include "support/soft_verbs.h"

/* Set before agents exist and only read when one is created, so plain
 * globals suffice (see kvrt_verbs_use). */
static kvrt_verbs_ops_t current_ops;
static int current_set;
static kvrt_verbs_tuning_t current_tuning;

void kvrt_verbs_use(const kvrt_verbs_ops_t *ops, const kvrt_verbs_tuning_t *tuning)
{
    current_ops = ops ? *ops : kvrt_verbs_libibverbs_ops;
    current_set = 1;
    current_tuning = tuning ? *tuning : (kvrt_verbs_tuning_t){0};
}

const kvrt_verbs_ops_t *kvrt_verbs_current_ops(void)
{
    return current_set ? &current_ops : &kvrt_verbs_libibverbs_ops;
}

kvrt_verbs_tuning_t kvrt_verbs_current_tuning(void)
{
    return current_tuning;
}
