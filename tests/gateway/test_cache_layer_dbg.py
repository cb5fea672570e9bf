from tests.gateway.test_cache_layer import *  # noqa
async def test_dbg(rig):
    a = await rig.get("/respond/q?color=red&size=large")
    print(a.status, a.headers, a.body)
