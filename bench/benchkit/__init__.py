"""Helpers of the benchmark (`bench/run.py`) and the profiler (`bench/profile_gateway.py`)."""
