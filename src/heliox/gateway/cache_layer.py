"""The response cache on the request path (placeholder: passes through until the cache lands)."""

from __future__ import annotations

from heliox.gateway.exchange import ProxyRequest, ResponseSink
from heliox.gateway.proxy import pass_through
from heliox.runtime import Runtime


class CacheLayer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def serve(self, req: ProxyRequest, send: ResponseSink) -> None:
        rt = self.runtime
        await pass_through(rt.upstream, rt.metrics, req, send)
