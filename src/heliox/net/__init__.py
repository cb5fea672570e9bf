"""The gateway's HTTP client to upstreams (`upstream_client`) and its connection bulkheads.

Below the runtime, which owns the client, and the gateway, which sends requests through it.
Not to be confused with `heliox.upstream`, the example upstream application.
"""
