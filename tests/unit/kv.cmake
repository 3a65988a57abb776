kvrt_add_test(unit test_kv_layout DEPS kv)
kvrt_add_test(unit test_kv_pool DEPS kv)
kvrt_add_test(unit test_kv_block_table DEPS kv)
kvrt_add_test(unit test_kv_model DEPS kv)
