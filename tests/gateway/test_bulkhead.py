"""The bulkheads' arithmetic, driven directly: per-route slots and a per-key cap, each with a
bounded, first-come wait, and maps that return to empty."""

from __future__ import annotations

import asyncio

import pytest

from heliox.net.bulkhead import Bulkheads, Busy

SHORT = 0.05  # the bounded wait under test: long enough to be a wait, short enough for a test


def heads(route_limit: int = 2, key_limit: int = 100, wait: float = 10.0) -> Bulkheads:
    return Bulkheads(route_limit=route_limit, key_limit=key_limit, wait=wait)


async def test_key_cap_counts_across_routes_and_refuses_after_the_wait() -> None:
    b = heads(route_limit=10, key_limit=3, wait=SHORT)
    held = [await b.acquire(route_id=r, limit=None, key_id=7) for r in (1, 1, 2)]
    with pytest.raises(Busy) as caught:
        await b.acquire(route_id=3, limit=None, key_id=7)
    assert (caught.value.reason, caught.value.limit) == ("key", 3)
    other = await b.acquire(route_id=1, limit=None, key_id=8)  # another key is not affected
    keyless = await b.acquire(route_id=1, limit=None, key_id=None)  # public routes: no key cap
    held[0].release()
    held.append(await b.acquire(route_id=3, limit=None, key_id=7))
    for permit in [*held, other, keyless]:
        permit.release()
    assert b.in_flight() == (0, 0)


async def test_a_key_at_its_cap_waits_for_its_own_requests_in_order() -> None:
    """One client with more connections than the cap queues instead of getting 503s, while the
    route still has connections for other keys."""
    b = heads(route_limit=10, key_limit=2)
    held = [await b.acquire(route_id=1, limit=None, key_id=4) for _ in range(2)]
    order: list[str] = []

    async def waiter(name: str) -> None:
        permit = await b.acquire(route_id=1, limit=None, key_id=4)
        order.append(name)
        permit.release()

    tasks = [asyncio.create_task(waiter("a")), asyncio.create_task(waiter("b"))]
    await asyncio.sleep(0)  # one turn: each waiter runs into its queue (the assert checks it)
    assert not order and len(b._keys[4].waiters) == 2
    neighbour = await b.acquire(route_id=1, limit=None, key_id=5)  # not held up at all
    held[0].release()
    await asyncio.gather(*tasks)
    assert order == ["a", "b"]
    for permit in (held[1], neighbour):
        permit.release()
    assert b.in_flight() == (0, 0)


async def test_a_full_route_makes_requests_wait_in_order_then_hands_over() -> None:
    b = heads(route_limit=1)
    first = await b.acquire(route_id=1, limit=None, key_id=None)
    order: list[str] = []

    async def waiter(name: str) -> None:
        permit = await b.acquire(route_id=1, limit=None, key_id=None)
        order.append(name)
        permit.release()

    tasks = [asyncio.create_task(waiter("a")), asyncio.create_task(waiter("b"))]
    await asyncio.sleep(0)  # one turn: each waiter runs into its queue (the assert checks it)
    assert not order and len(b._gates[1].waiters) == 2
    other_route = await b.acquire(route_id=2, limit=None, key_id=None)  # not held up at all
    first.release()
    await asyncio.gather(*tasks)
    assert order == ["a", "b"]
    other_route.release()
    assert b.in_flight() == (0, 0)


async def test_the_wait_is_bounded_and_gives_the_key_back() -> None:
    b = heads(route_limit=1, key_limit=2, wait=SHORT)
    held = await b.acquire(route_id=1, limit=None, key_id=5)
    with pytest.raises(Busy) as caught:
        await b.acquire(route_id=1, limit=None, key_id=5)
    assert (caught.value.reason, caught.value.limit) == ("route", 1)
    # The refused request no longer counts against its key: one more may still go elsewhere.
    elsewhere = await b.acquire(route_id=2, limit=None, key_id=5)
    held.release()
    elsewhere.release()
    assert b.in_flight() == (0, 0)


async def test_the_route_setting_overrides_the_default() -> None:
    b = heads(route_limit=1, wait=SHORT)
    permits = [await b.acquire(route_id=1, limit=3, key_id=None) for _ in range(3)]
    with pytest.raises(Busy) as caught:
        await b.acquire(route_id=1, limit=3, key_id=None)
    assert caught.value.limit == 3
    for p in permits:
        p.release()


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    b = heads(route_limit=1)
    held = await b.acquire(route_id=1, limit=None, key_id=9)
    task = asyncio.create_task(b.acquire(route_id=1, limit=None, key_id=9))
    await asyncio.sleep(0)  # one turn: it runs into the queue (acquire queues before awaiting)
    assert len(b._gates[1].waiters) == 1  # it waits: the cancellation finds it queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    held.release()
    assert b.in_flight() == (0, 0)
    again = await b.acquire(route_id=1, limit=None, key_id=9)  # the slot was not lost
    again.release()


async def test_release_is_idempotent() -> None:
    b = heads(route_limit=1, wait=SHORT)
    permit = await b.acquire(route_id=1, limit=None, key_id=1)
    permit.release()
    permit.release()
    assert b.in_flight() == (0, 0)
    one = await b.acquire(route_id=1, limit=None, key_id=1)
    with pytest.raises(Busy):  # a double release did not make room for two
        await b.acquire(route_id=1, limit=None, key_id=1)
    one.release()
