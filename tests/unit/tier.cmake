# Tiers below the pool: host DRAM (unit), SSD faults and restart (integration).
kvrt_add_test(unit test_tier_host DEPS tier LABELS threads TIMEOUT 60)
# A device pool's tier: stream, sync and pinning handed over by the engine.
kvrt_add_test(unit test_tier_device DEPS tier LABELS threads TIMEOUT 60)
