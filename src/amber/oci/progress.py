"""Progress reporting for pulls and imports: a small protocol the CLI (rich) and the pipeline (log) fill."""

from __future__ import annotations

from amber.oci.manifest import Descriptor


class ImportProgress:
    """Callbacks for a pull/import; the base class ignores everything. Called from the event loop thread.

    Order per layer: ``layer_started`` (``cached`` True means no download), ``layer_advanced`` with byte
    counts while downloading, ``layer_finished``. ``phase`` announces ``resolve``, ``pull``, ``unpack``,
    ``ext4`` as the import proceeds.
    """

    def phase(self, name: str) -> None:
        return None

    def layer_started(self, descriptor: Descriptor, *, cached: bool) -> None:
        return None

    def layer_advanced(self, descriptor: Descriptor, nbytes: int) -> None:
        return None

    def layer_finished(self, descriptor: Descriptor) -> None:
        return None
