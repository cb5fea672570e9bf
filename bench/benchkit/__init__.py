"""Helpers of the nginx-vs-Heliox benchmark (`bench/run.py`) and its profiler (`bench/profile_hit.py`)."""
