/* Compiled with -std=c99 -pedantic -Werror: the public headers are C99. */
#include "kvrt/kvrt.h"

int kvrt_abi_c99_probe(void);
int kvrt_abi_c99_probe(void) { return (int)sizeof(kvrt_pool_params_t) + KVRT_OK; }
