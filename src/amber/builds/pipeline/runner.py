"""The one cached sequence every phase goes through: key → use → hit log, or miss/bypass log → run → claim → publish.

A phase describes what it wants as an ``Entry`` (where in ``CacheStore`` the result lives, the decision for it,
what it is built over) and gives a ``make`` that writes the result at a private path in the build's work
directory. ``CachedRunner.run``:

1. looks the entry up (``CacheStore.use``) unless the decision bypasses the cache; a hit is held (shared) for the
   rest of the build and logged (``hit``), and ``make`` does not run;
2. otherwise logs ``miss`` (reason ``missing_or_incompatible``) or ``bypass`` (the decision's reason), runs
   ``make(private)``, then — when the decision allows and the entry's parent is cached — claims the entry,
   hard-links the result into it, publishes it and logs ``stored``. A claim another build holds, or an entry
   another build published meanwhile, leaves the result private (nothing is logged for it).

An entry that is a delta over a parent (a step layer, a final artifact: ``chained``) is cached only over a held
parent: once one link of a chain is private, everything built on it is too. Results are linked, never copied,
so the private path and the cache entry are the same files; ``make`` must leave them frozen once it returns.
The held entries are appended to ``holds``; the build releases them all when it ends (``EntryHold.release``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from amber.builds.pipeline.events import BuildLog
from amber.builds.pipeline.store import CacheStore, EntryClaim, EntryHold
from amber.builds.planning.cache import CacheDecision
from amber.contract.logs import CacheKind, CacheReason, CacheStatus

_WHY = {
    CacheReason.WHOLE_BUILD_SKIP_CACHE: "skip_cache is set for the whole build",
    CacheReason.FORCE_UPLOAD: "the copy forces a fresh upload",
    CacheReason.BUILDER_CACHE_BOUNDARY: "after a skip_cache boundary",
}


@dataclass(frozen=True)
class Entry:
    """One cache entry a phase wants."""

    kind: CacheKind
    path: Path  # the entry in ``CacheStore`` (``base_path``, ``layer_path``, ``final_path`` …)
    decision: CacheDecision
    what: str  # the thing, for messages: "base disk", "step 2/4", "template artifact"
    subject: str  # ``cache_subject``: which one (an image reference, a step's instruction …)
    parent: EntryHold | None = None  # the held entry this one is a delta over
    chained: bool = False  # a delta over ``parent``: cached only when the parent is held
    step: int | None = None  # ``step_index`` of its log entries
    why: str | None = None  # the bypass reason in words, when the decision's reason does not say it

    @property
    def cacheable(self) -> bool:
        return self.decision.lookup and (self.parent is not None or not self.chained)


@dataclass(frozen=True)
class Cached:
    """Where a phase's result is: the cache entry of a hit, or what ``make`` wrote."""

    path: Path
    hold: EntryHold | None  # the held cache entry (a hit or a stored result); None: the result is private
    hit: bool


class CachedRunner:
    def __init__(self, store: CacheStore, log: BuildLog, holds: list[EntryHold]) -> None:
        self.store = store
        self.log = log
        self.holds = holds

    async def run(
        self, entry: Entry, private: Path, make: Callable[[Path], Awaitable[None]], *, reuse: bool = True
    ) -> Cached:
        """The sequence of the module docstring. ``reuse=False``: produce without looking up (a running build
        continues its own chain; its miss is still logged)."""
        hit = await self.lookup(entry, reuse=reuse)
        if hit is not None:
            return Cached(hit.path, hit, hit=True)
        await make(private)
        return Cached(private, await self.store_result(entry, private), hit=False)

    async def lookup(self, entry: Entry, *, reuse: bool = True) -> EntryHold | None:
        """Step 1, and the miss/bypass log of step 2: the held hit, or None (then produce and ``store_result``)."""
        use = self.store.use(entry.path, entry.parent) if entry.cacheable and reuse else None
        if use is not None:
            self.holds.append(use)
            await self._log(entry, CacheStatus.HIT, f"{entry.what} cached")
        elif entry.decision.lookup:
            await self._log(entry, CacheStatus.MISS, f"{entry.what} not cached",
                            CacheReason.MISSING_OR_INCOMPATIBLE)  # fmt: skip
        else:
            why = entry.why or _WHY.get(entry.decision.reason or CacheReason.BUILDER_CACHE_BOUNDARY, "")
            await self._log(entry, CacheStatus.BYPASS, f"{entry.what} rebuilt ({why})", entry.decision.reason)
        return use

    async def store_result(self, entry: Entry, made: Path) -> EntryClaim | None:
        """The rest of step 2: link ``made`` into the entry and publish it (None: the result stays private)."""
        claim = self.store.claim(entry.path, entry.parent) if entry.cacheable else None
        if claim is None:
            return None
        self.holds.append(claim)
        await asyncio.to_thread(link_tree, made, claim.path)
        await asyncio.to_thread(claim.publish)
        await self._log(entry, CacheStatus.STORED, f"{entry.what} stored")
        return claim

    async def _log(self, entry: Entry, status: CacheStatus, message: str, reason: CacheReason | None = None) -> None:
        text = message if entry.subject == entry.what else f"{message}: {entry.subject}"
        await self.log.cache(entry.kind, status, entry.subject, text, reason=reason, step=entry.step)


def walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            yield Path(dirpath) / name


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link ``src`` (a file, or every file of a directory) at ``dst`` (same filesystem; results are frozen)."""
    if not src.is_dir():
        os.link(src, dst)
        return
    dst.mkdir(parents=True, exist_ok=True)
    for path in walk_files(src):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            target.symlink_to(os.readlink(path))
        else:
            os.link(path, target)
