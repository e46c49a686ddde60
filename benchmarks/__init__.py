"""Latency benchmarks: scripts that write JSON and a markdown table (see the benchmarks issue)."""
