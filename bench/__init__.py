"""Benchmarks: the agent side by side with reference tools on the same work."""
