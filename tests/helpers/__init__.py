"""Helpers shared by the tests: data makers, a loopback Hub, process runners, golden readers."""
