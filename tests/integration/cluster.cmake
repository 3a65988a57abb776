# Cluster membership against a real etcd started by the test (label etcd).
kvrt_add_test(integration test_cluster_etcd DEPS cluster LABELS etcd threads TIMEOUT 300)
# Prefill/decode hand-off between two processes over TCP on loopback.
kvrt_add_test(integration test_cluster_handoff DEPS cluster LABELS threads TIMEOUT 300)
kvrt_add_test(integration test_cluster_handoff_hostile DEPS cluster LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_cluster_pull DEPS cluster LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_cluster_pull_tier DEPS cluster LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_cluster_channel DEPS cluster LABELS threads TIMEOUT 120)
