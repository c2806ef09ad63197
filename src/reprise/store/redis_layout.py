"""Where the Redis store's keys live: one key group on a single server, N on a cluster.

A *group* is everything one Lua script or one KNN query may touch together: entry hashes,
the LRU / expiry / size bookkeeping, the partition sizes and the search index over those
entries. On one server there is a single group whose names are exactly the historical
layout (``{prefix}:e:…``, ``{prefix}:lru``, ``{prefix}:idx``), so existing caches keep working.

On a Redis Cluster every name of a group carries the same hash tag (``{prefix}:{tag}:…``):
all of them hash to one slot, so a write script, an eviction and a KNN query each run on
one shard, and the search index (which a shard builds over its own keys only) needs no
search coordinator. A namespace belongs to group ``blake2b(namespace) mod N``: a fixed
number of groups, not one per namespace, because each group is one search index and a
deployment with thousands of tenants should not hold thousands of indexes (measured in
``bench/results/cluster.md``); tenants of one group are kept apart inside it by the TAG
filters the single-server layout already uses. The namespace itself never forms the tag
(it follows the tag in the key), so braces in a namespace name cannot move its keys.

Each group's tag is chosen so that the N groups' slots are spread evenly over 0…16383:
``redis-cli --cluster create`` gives every primary one contiguous range of slots, so evenly
spread groups land on the shards in equal numbers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from redis.crc import key_slot

SLOTS = 16384


@dataclass(frozen=True, slots=True)
class KeyGroup:
    """The names of one group; ``max_bytes`` is its share of the byte bound."""

    base: str
    max_bytes: int

    @property
    def index(self) -> str:
        return f"{self.base}:idx"

    @property
    def entry_prefix(self) -> str:
        return f"{self.base}:e:"

    @property
    def book_keys(self) -> list[str]:
        """LRU, expiry, sizes, total bytes, partition sizes: the keys every write script
        binds first."""
        b = self.base
        return [f"{b}:lru", f"{b}:exp", f"{b}:size", f"{b}:bytes", f"{b}:parts"]

    @property
    def lru(self) -> str:
        return f"{self.base}:lru"

    @property
    def parts(self) -> str:
        return f"{self.base}:parts"

    def ns_prefix(self, namespace: str) -> str:
        # The length prefix keeps ``ns``/``key`` pairs unambiguous whatever they hold.
        return f"{self.base}:e:{len(namespace)}:{namespace}:"

    def entry_key(self, namespace: str, key: str) -> str:
        return self.ns_prefix(namespace) + key

    def served_key(self, namespace: str, response_id: str) -> str:
        return f"{self.base}:sv:{len(namespace)}:{namespace}:{response_id}"

    def served_prefix(self) -> str:
        return f"{self.base}:sv:"


def _tag_for(group: int, groups: int) -> str:
    """The first tag ``g<group>.<n>`` whose slot falls in the group's share of the slots."""
    lo, hi = group * SLOTS // groups, (group + 1) * SLOTS // groups
    n = 0
    while True:
        tag = f"g{group}.{n}"
        if lo <= key_slot(tag.encode()) < hi:
            return tag
        n += 1


def group_number(name: str, groups: int) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(),
                          "big") % groups


def tagged_bases(prefix: str, groups: int) -> tuple[str, ...]:
    """``{prefix}:{tag}`` for each group, tags spread evenly over the slots; refuses what
    would break the tag (used by the cache store and the document index alike)."""
    if "{" in prefix or "}" in prefix:
        # The prefix comes before the group's tag: a brace in it would become the hash tag
        # and put every group on one slot (or split a group's keys).
        raise ValueError(f"REPRISE_REDIS_PREFIX {prefix!r} holds a brace, which a Redis"
                         " Cluster would read as a hash tag: remove it")
    if not 1 <= groups <= SLOTS:
        raise ValueError(f"REPRISE_REDIS_CLUSTER_GROUPS must be 1…{SLOTS}, not {groups}")
    return tuple(f"{prefix}:{{{_tag_for(i, groups)}}}" for i in range(groups))


class Layout:
    """Maps a namespace to its key group."""

    def __init__(self, prefix: str, max_bytes: int, *, cluster: bool, groups: int) -> None:
        if cluster:
            bases = tagged_bases(prefix, groups)
            share = max(1, max_bytes // groups)
            self.groups = tuple(KeyGroup(base, share) for base in bases)
        else:
            self.groups = (KeyGroup(prefix, max_bytes),)
        self.cluster = cluster

    def group(self, namespace: str) -> KeyGroup:
        if len(self.groups) == 1:
            return self.groups[0]
        return self.groups[group_number(namespace, len(self.groups))]
