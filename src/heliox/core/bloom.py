"""Bloom filter arithmetic and the rotating, in-memory negative cache.

Sizing: m = ceil(-n ln p / (ln 2)^2) bits and k = round(m / n * ln 2) hashes for n items at
false-positive rate p. Bit positions come from one keyed 128-bit BLAKE2b digest split into two
64-bit halves, g_i = h1 + i * h2 mod m (Kirsch-Mitzenmacher double hashing), so memory and Redis
filters compute the same positions.

Rotation: generation = floor(now / rotation_seconds); writes go to the current generation and a
lookup checks the current and previous one, so an item is remembered for one to two rotations
and then forgotten without deletes. Each generation is sized for p' = 1 - sqrt(1 - p), so a
lookup that consults two full generations still answers wrongly with probability at most p.

What a false positive costs: a request for a resource that exists is answered with the cached
404 instead of reaching the upstream, for at most two rotations. Two guards keep that at the
configured rate: a generation stops accepting items once it holds `expected_items` (a flood of
distinct 404s can fill it but never push its false-positive rate above p'), and the item should
be the full cache key (tenant and vary included), so one tenant's 404s never answer another's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from hashlib import blake2b

__all__ = [
    "BloomFilter",
    "BloomParams",
    "RotatingBloom",
    "bloom_params",
    "generation",
    "generation_false_positive_rate",
    "positions",
]


@dataclass(frozen=True, slots=True)
class BloomParams:
    bits: int  # m
    hashes: int  # k
    capacity: int  # n: items one filter accepts before refusing more

    @property
    def nbytes(self) -> int:
        return (self.bits + 7) // 8

    def false_positive_rate(self, items: int | None = None) -> float:
        """The expected false-positive rate with `items` inserted (default: at capacity)."""
        n = self.capacity if items is None else items
        return float((1.0 - math.exp(-self.hashes * n / self.bits)) ** self.hashes)


def bloom_params(expected_items: int, false_positive_rate: float) -> BloomParams:
    """Optimal m and k for `expected_items` at `false_positive_rate`."""
    if expected_items < 1:
        raise ValueError("expected_items must be at least 1")
    if not 0.0 < false_positive_rate < 1.0:
        raise ValueError("false_positive_rate must be strictly between 0 and 1")
    n = expected_items
    bits = math.ceil(-n * math.log(false_positive_rate) / (math.log(2) ** 2))
    hashes = max(1, round(bits / n * math.log(2)))
    return BloomParams(bits=bits, hashes=hashes, capacity=n)


def generation_false_positive_rate(false_positive_rate: float) -> float:
    """The per-generation rate that keeps a two-generation lookup at `false_positive_rate`."""
    return 1.0 - math.sqrt(1.0 - false_positive_rate)


def _item_bytes(item: str | bytes) -> bytes:
    return item if isinstance(item, bytes) else item.encode("utf-8", "surrogatepass")


def positions(item: str | bytes, params: BloomParams, key: bytes = b"") -> list[int]:
    """The k bit positions of `item`; `key` (at most 64 bytes) makes them unguessable."""
    digest = blake2b(_item_bytes(item), digest_size=16, key=key).digest()
    m = params.bits
    h1 = int.from_bytes(digest[:8], "little") % m
    h2 = int.from_bytes(digest[8:], "little") % m or 1  # a zero step would repeat one bit k times
    return [(h1 + i * h2) % m for i in range(params.hashes)]


def generation(now: float, rotation_seconds: float) -> int:
    """The generation id current at `now`."""
    return math.floor(now / rotation_seconds)


class BloomFilter:
    """A plain bit array (bytearray) with an insertion count."""

    __slots__ = ("_bits", "count", "params")

    def __init__(self, params: BloomParams) -> None:
        self.params = params
        self._bits = bytearray(params.nbytes)
        self.count = 0  # items that set at least one new bit

    def contains_positions(self, bit_positions: list[int]) -> bool:
        bits = self._bits
        return all(bits[p >> 3] & (1 << (p & 7)) for p in bit_positions)

    def add_positions(self, bit_positions: list[int]) -> bool:
        """Set the bits; True when the item was new (some bit was still clear)."""
        bits = self._bits
        new = False
        for p in bit_positions:
            mask = 1 << (p & 7)
            if not bits[p >> 3] & mask:
                bits[p >> 3] |= mask
                new = True
        if new:
            self.count += 1
        return new

    def add(self, item: str | bytes, key: bytes = b"") -> bool:
        return self.add_positions(positions(item, self.params, key))

    def might_contain(self, item: str | bytes, key: bytes = b"") -> bool:
        return self.contains_positions(positions(item, self.params, key))


@dataclass(slots=True)
class RotatingBloom:
    """Two live generations of BloomFilter; `now` is passed in, nothing is read from a clock."""

    params: BloomParams
    rotation_seconds: float
    hash_key: bytes = b""
    _generations: dict[int, BloomFilter] = field(default_factory=dict)

    @classmethod
    def sized(
        cls,
        expected_items: int,
        false_positive_rate: float,
        rotation_seconds: float,
        hash_key: bytes = b"",
    ) -> RotatingBloom:
        """A filter whose two-generation lookups stay at `false_positive_rate`."""
        if rotation_seconds <= 0:
            raise ValueError("rotation_seconds must be positive")
        params = bloom_params(expected_items, generation_false_positive_rate(false_positive_rate))
        return cls(params, rotation_seconds, hash_key)

    def _live(self, now: float) -> int:
        current = generation(now, self.rotation_seconds)
        for old in [g for g in self._generations if g < current - 1 or g > current]:
            # A generation ahead of `now` can only come from a clock that went backwards;
            # dropping it forgets some 404s, which is always safe.
            del self._generations[old]
        return current

    def might_contain(self, item: str | bytes, now: float) -> bool:
        current = self._live(now)
        if not self._generations:
            return False
        bit_positions = positions(item, self.params, self.hash_key)
        return any(
            f.contains_positions(bit_positions)
            for g, f in self._generations.items()
            if g in (current, current - 1)
        )

    def add(self, item: str | bytes, now: float) -> bool:
        """Remember `item`; False when it was already there or the generation is full."""
        current = self._live(now)
        bloom = self._generations.get(current)
        if bloom is None:
            bloom = self._generations[current] = BloomFilter(self.params)
        if bloom.count >= self.params.capacity:
            return False
        return bloom.add_positions(positions(item, self.params, self.hash_key))

    def clear(self) -> None:
        self._generations.clear()
