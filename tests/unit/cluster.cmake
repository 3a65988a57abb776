# Cluster layer: KV events, the prefix directory, routing.
kvrt_add_test(unit test_cluster_events DEPS cluster TIMEOUT 60)
kvrt_add_test(unit test_cluster_directory DEPS cluster TIMEOUT 120)
kvrt_add_test(unit test_cluster_router DEPS cluster TIMEOUT 60)
kvrt_add_test(unit test_cluster_pull_cost DEPS cluster TIMEOUT 60)
