# Cluster membership against a real etcd started by the test (label etcd).
kvrt_add_test(integration test_cluster_etcd DEPS cluster LABELS etcd threads TIMEOUT 300)
