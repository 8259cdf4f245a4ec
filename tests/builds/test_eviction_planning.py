"""plan_eviction: LRU eviction of whole subtrees, never in use, under the limit when possible (pure)."""

from __future__ import annotations

from collections.abc import Hashable

from hypothesis import given, settings
from hypothesis import strategies as st

from amber.builds.planning.eviction import CacheEntry, CacheFile, EvictionPlan, cache_bytes, plan_eviction

NOW = 1_000_000.0
IDLE = 300.0


def _entry(entry_id: str, files: set[Hashable], last_used: float, parent: str | None = None, *, in_use: bool = False,
           valid: bool = True) -> CacheEntry:  # fmt: skip
    return CacheEntry(entry_id, frozenset(files), last_used, parent, in_use, valid)


def test_under_the_limit_nothing_goes() -> None:
    files = {1: CacheFile(100), 2: CacheFile(100)}
    entries = [_entry("a", {1}, 0), _entry("b", {2}, 0, "a")]
    plan = plan_eviction(entries, files, max_bytes=200, now=NOW, min_idle_secs=IDLE)
    assert plan.evict == () and plan.bytes_before == plan.bytes_after == 200


def test_zero_means_unbounded() -> None:
    files = {1: CacheFile(10**12)}
    plan = plan_eviction([_entry("a", {1}, 0)], files, max_bytes=0, now=NOW, min_idle_secs=IDLE)
    assert plan.evict == ()


def test_least_recently_used_leaf_first_and_chains_go_children_first() -> None:
    files = {i: CacheFile(100) for i in range(5)}
    entries = [
        _entry("base", {0}, 10),
        _entry("l1", {1}, 10, "base"),
        _entry("l2", {2}, 10, "l1"),
        _entry("final", {3}, 10, "l2"),
        _entry("other", {4}, 50),
    ]
    plan = plan_eviction(entries, files, max_bytes=100, now=NOW, min_idle_secs=IDLE)
    assert plan.evict == ("final", "l2", "l1", "base")
    assert plan.bytes_after == 100


def test_an_entry_in_use_keeps_its_whole_chain() -> None:
    files = {i: CacheFile(100) for i in range(4)}
    entries = [
        _entry("base", {0}, 0),
        _entry("l1", {1}, 0, "base", in_use=True),
        _entry("l2", {2}, 0, "l1"),
        _entry("x", {3}, 0),
    ]
    plan = plan_eviction(entries, files, max_bytes=1, now=NOW, min_idle_secs=IDLE)
    assert set(plan.evict) == {"l2", "x"}  # l1 is used, so base (its parent) stays too
    assert plan.bytes_after == 200


def test_recently_used_entries_are_protected() -> None:
    files = {1: CacheFile(100), 2: CacheFile(100)}
    entries = [_entry("old", {1}, NOW - IDLE - 1), _entry("fresh", {2}, NOW - IDLE + 1)]
    plan = plan_eviction(entries, files, max_bytes=1, now=NOW, min_idle_secs=IDLE)
    assert plan.evict == ("old",)


def test_files_shared_with_artifacts_free_nothing() -> None:
    # a final artifact hard-links its layer (shared inode 1); inode 2 is also linked from a template artifact
    files = {1: CacheFile(100), 2: CacheFile(1000, linked_outside=True), 3: CacheFile(50)}
    entries = [_entry("layer", {1}, 0), _entry("final", {1, 2, 3}, 0, "layer")]
    assert cache_bytes(entries, files) == 150
    plan = plan_eviction(entries, files, max_bytes=99, now=NOW, min_idle_secs=IDLE)
    # the final alone frees only its own file (50 B): the layer must go too to get under 99 B
    assert plan.evict == ("final", "layer") and plan.bytes_after == 0


def test_invalid_entries_go_with_everything_built_on_them_whatever_the_limit() -> None:
    files = {i: CacheFile(10) for i in range(4)}
    entries = [
        _entry("orphan", {0}, 0, "gone"),
        _entry("child", {1}, 0, "orphan"),
        _entry("stale", {2}, 0, "base", valid=False),
        _entry("base", {3}, 0),
    ]
    plan = plan_eviction(entries, files, max_bytes=0, now=NOW, min_idle_secs=IDLE)
    assert plan.evict.index("child") < plan.evict.index("orphan")
    assert set(plan.evict) == {"orphan", "child", "stale"} == set(plan.invalid)


# --- properties -------------------------------------------------------------------------------------------------


@st.composite
def caches(draw: st.DrawFn) -> tuple[list[CacheEntry], dict[Hashable, CacheFile]]:
    n_files = draw(st.integers(1, 25))
    files: dict[Hashable, CacheFile] = {}
    for i in range(n_files):
        shared_with_an_artifact = draw(st.integers(0, 4)) == 0
        files[i] = CacheFile(draw(st.integers(0, 5000)), linked_outside=shared_with_an_artifact)
    n = draw(st.integers(0, 30))
    entries = []
    for i in range(n):
        choice = draw(st.integers(0, 9))
        if i == 0 or choice < 3:
            parent = None
        elif choice == 9:
            parent = "missing"  # a recorded parent that is gone
        else:
            parent = f"e{draw(st.integers(0, i - 1))}"
        held = draw(st.sets(st.integers(0, n_files - 1), max_size=4))
        entries.append(
            _entry(
                f"e{i}", set(held), NOW - draw(st.sampled_from([0, 100, 299, 301, 1000, 5000, 10**6])), parent,
                in_use=draw(st.integers(0, 5)) == 0, valid=draw(st.integers(0, 9)) > 0,
            )
        )  # fmt: skip
    return entries, files


def _protected(entries: list[CacheEntry]) -> set[str]:
    by_id = {e.id: e for e in entries}
    out: set[str] = set()
    for e in entries:
        if e.in_use or NOW - e.last_used < IDLE:
            cur: str | None = e.id
            while cur is not None and cur in by_id:
                out.add(cur)
                cur = by_id[cur].parent
    return out


def _chain_ok(entry: CacheEntry, by_id: dict[str, CacheEntry]) -> bool:
    cur: CacheEntry | None = entry
    while cur is not None:
        if not cur.valid:
            return False
        if cur.parent is None:
            return True
        cur = by_id.get(cur.parent)
    return False


@settings(max_examples=400, deadline=None)
@given(caches(), st.integers(0, 60_000))
def test_properties(cache: tuple[list[CacheEntry], dict[Hashable, CacheFile]], max_bytes: int) -> None:
    entries, files = cache
    plan: EvictionPlan = plan_eviction(entries, files, max_bytes=max_bytes, now=NOW, min_idle_secs=IDLE)
    by_id = {e.id: e for e in entries}
    evicted = set(plan.evict)
    assert len(evicted) == len(plan.evict)  # each once
    protected = _protected(entries)

    # never evicts an entry in use, used recently, or an ancestor of one
    assert not evicted & protected
    assert not any(by_id[i].in_use for i in evicted)

    # children are removed before their parents, and no remaining child loses its parent
    position = {entry_id: n for n, entry_id in enumerate(plan.evict)}
    for e in entries:
        if e.parent in evicted:
            assert e.id in evicted and position[e.id] < position[e.parent], (e, plan)

    remaining = [e for e in entries if e.id not in evicted]
    # every entry that can never be a hit again (broken chain) is gone unless protected
    for e in remaining:
        assert _chain_ok(e, by_id) or e.id in protected, e

    # byte accounting is exact
    assert plan.bytes_before == cache_bytes(entries, files)
    assert plan.bytes_after == cache_bytes(remaining, files)

    # under the limit whenever evicting every unprotected entry would get there
    if max_bytes > 0:
        floor = cache_bytes([e for e in entries if e.id in protected], files)
        if floor <= max_bytes:
            assert plan.bytes_after <= max_bytes, (plan, floor)
    # a valid entry is evicted only while the cache is over the limit: undoing the last LRU eviction would
    # put it back over (no needless eviction), and the least recently used leaf went first
    lru = [i for i in plan.evict if i not in plan.invalid]
    if lru:
        assert max_bytes > 0
        before_last = [e for e in entries if e.id not in evicted or e.id == lru[-1]]
        assert cache_bytes(before_last, files) > max_bytes
        first_candidates = [
            e for e in entries
            if e.id not in protected and e.id not in plan.invalid
            and not any(c.parent == e.id and c.id not in plan.invalid for c in entries)
        ]  # fmt: skip
        assert by_id[lru[0]].last_used == min(e.last_used for e in first_candidates)
