"""The BSG client and the fake BSG that tests, the demo and sandbox mode use."""
