"""Repository tools: fetching perf_analyzer, the docs reference pages and sample outputs."""
