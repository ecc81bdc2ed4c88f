"""Fixtures of the multi-host tests: the network-namespace test bed and the six-host training cluster."""

from mmclip_devtools.fixtures.netns import netns_cluster, require_netns, test_bed  # noqa: F401
