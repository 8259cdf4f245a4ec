"""Which cache entries to evict: least recently used first, whole subtrees, never anything in use. Pure.

The caches (image layer blobs, imported root disks, base disks, step layers, final artifacts) are one pool of
``CacheEntry`` values. An entry may have a *parent*: a step layer is a qcow2 delta over its parent layer (or
base), a final artifact is stored over its last layer. Rules, in order:

1. *Protected* entries are never evicted: in use (a running build holds them), used less than ``min_idle_secs``
   ago, or an ancestor of a protected entry (a build using a layer uses its whole chain).
2. *Invalid* entries (their parent is gone, was rebuilt, or was never recorded) and everything built on them
   are evicted whatever the limit: they can never be hits again.
3. While the bytes the cache holds exceed ``max_bytes`` (0 = unbounded), the least recently used unprotected
   entry that has no children left is evicted. Evicting leaves first keeps every remaining child's parent in
   place and ends with every unprotected entry gone when the limit cannot be met otherwise.

Sizes are per file (``inode``), because entries share files: final artifacts hard-link the layer chain and
template artifacts (never part of the cache) hard-link cache files too. A file counts towards the cache's
bytes, and is freed, only when no remaining entry holds it and nothing outside the cache links to it.
The result lists evictions children first: removing them in that order never leaves a child without parent.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CacheFile:
    """One file (inode) held by cache entries."""

    size: int  # bytes on disk
    linked_outside: bool = False  # also linked from outside the cache (e.g. a template artifact): never freed


@dataclass(frozen=True)
class CacheEntry:
    id: str
    files: frozenset[Hashable]  # keys into the ``files`` mapping
    last_used: float  # seconds since the epoch
    parent: str | None = None
    in_use: bool = False
    valid: bool = True  # False: its recorded parent is not the file it was built on (or unknown)


@dataclass(frozen=True)
class EvictionPlan:
    evict: tuple[str, ...]  # children before parents
    bytes_before: int
    bytes_after: int
    invalid: frozenset[str] = field(default_factory=frozenset)  # evicted because they could never be hits
    protected: frozenset[str] = field(default_factory=frozenset)

    @property
    def freed_bytes(self) -> int:
        return self.bytes_before - self.bytes_after


def cache_bytes(entries: Iterable[CacheEntry], files: Mapping[Any, CacheFile]) -> int:
    """Bytes the cache could free by evicting all of ``entries``."""
    held: set[Hashable] = set()
    for entry in entries:
        held |= entry.files
    return sum(files[f].size for f in held if not files[f].linked_outside)


def plan_eviction(
    entries: Iterable[CacheEntry],
    files: Mapping[Any, CacheFile],  # file key (e.g. (st_dev, st_ino)) → file
    *,
    max_bytes: int,
    now: float,
    min_idle_secs: float,
) -> EvictionPlan:
    by_id = {e.id: e for e in entries}
    children: dict[str, set[str]] = {i: set() for i in by_id}
    for e in by_id.values():
        if e.parent is not None and e.parent in by_id and e.parent != e.id:
            children[e.parent].add(e.id)

    protected: set[str] = set()
    for e in by_id.values():
        if e.in_use or now - e.last_used < min_idle_secs:
            _mark_ancestors(e.id, by_id, protected)

    # Invalid: parent missing or itself invalid (a broken link anywhere up the chain), or a cycle.
    invalid: set[str] = set()
    for e in by_id.values():
        if _chain_broken(e.id, by_id):
            invalid.add(e.id)

    holders: dict[Hashable, int] = {}
    for e in by_id.values():
        for f in e.files:
            holders[f] = holders.get(f, 0) + 1
    used = sum(files[f].size for f in holders if not files[f].linked_outside)
    before = used
    remaining = set(by_id)
    order: list[str] = []

    def evict(entry_id: str) -> None:
        nonlocal used
        remaining.discard(entry_id)
        order.append(entry_id)
        for f in by_id[entry_id].files:
            holders[f] -= 1
            if holders[f] == 0 and not files[f].linked_outside:
                used -= files[f].size

    # 2. invalid subtrees, children first (a post-order walk; protected entries and their ancestors stay)
    for entry_id in sorted(invalid):
        for node in _post_order(entry_id, children):
            if node in remaining and node not in protected and not (children[node] & remaining):
                evict(node)

    # 3. LRU leaves until under the limit
    if max_bytes > 0 and used > max_bytes:
        heap = [
            (by_id[i].last_used, i) for i in remaining if i not in protected and not (children[i] & remaining)
        ]
        heapq.heapify(heap)
        while used > max_bytes and heap:
            _, entry_id = heapq.heappop(heap)
            if entry_id not in remaining:
                continue
            evict(entry_id)
            parent = by_id[entry_id].parent
            if (
                parent is not None and parent in remaining and parent not in protected
                and not (children[parent] & remaining)
            ):  # fmt: skip
                heapq.heappush(heap, (by_id[parent].last_used, parent))

    return EvictionPlan(
        evict=tuple(order),
        bytes_before=before,
        bytes_after=used,
        invalid=frozenset(invalid & set(order)),
        protected=frozenset(protected),
    )


def _mark_ancestors(entry_id: str, by_id: Mapping[str, CacheEntry], marked: set[str]) -> None:
    current: str | None = entry_id
    while current is not None and current in by_id and current not in marked:
        marked.add(current)
        current = by_id[current].parent


def _chain_broken(entry_id: str, by_id: Mapping[str, CacheEntry]) -> bool:
    seen: set[str] = set()
    current: str | None = entry_id
    while current is not None:
        if current in seen or current not in by_id or not by_id[current].valid:
            return True
        seen.add(current)
        current = by_id[current].parent
    return False


def _post_order(root: str, children: Mapping[str, set[str]]) -> list[str]:
    """``root``'s subtree, every node after all of its children."""
    out: list[str] = []
    stack: list[tuple[str, bool]] = [(root, False)]
    seen: set[str] = set()
    while stack:
        node, expanded = stack.pop()
        if expanded:
            out.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        stack.extend((c, False) for c in sorted(children.get(node, ())))
    return out
