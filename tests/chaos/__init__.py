"""Chaos tests: real workers, a Redis of each test's own, things broken on purpose."""
