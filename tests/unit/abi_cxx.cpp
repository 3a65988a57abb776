// Compiled as C++11 with -pedantic -Werror and linked against the shared
// library: the public headers are usable from C++ (extern "C", no C-only
// constructs) and only kvrt_ symbols are needed.
#include "kvrt/kvrt.h"

#include <cstdio>
#include <cstring>

int main()
{
    uint32_t version = 0;
    const char *text = nullptr;
    if (kvrt_version(&version, &text) != KVRT_OK || version != KVRT_VERSION)
        return 1;
    kvrt_ctx_t *ctx = nullptr;
    if (kvrt_ctx_create(nullptr, &ctx) != KVRT_OK)
        return 1;
    kvrt_pool_params_t params = {};
    params.layout.num_layers = 1;
    params.layout.num_kv_heads = 1;
    params.layout.head_dim = 8;
    params.layout.tokens_per_block = 16;
    params.num_blocks = 8;
    kvrt_pool_t *pool = nullptr;
    int rc = kvrt_pool_create(ctx, &params, &pool) == KVRT_OK ? 0 : 1;
    kvrt_table_id_t table = 0;
    if (rc == 0 && kvrt_table_create(pool, &table) != KVRT_OK)
        rc = 1;
    if (rc == 0 && std::strcmp(kvrt_status_str(KVRT_ERR_NO_BLOCKS), "not enough free KV blocks"))
        rc = 1;
    kvrt_ctx_destroy(ctx);
    std::printf("%s: kvrt %s from C++\n", rc ? "FAIL" : "ok", text);
    return rc;
}
