"""The template HTTP API: routes per resource (``routes/``), Bearer-key auth and rate limits (``deps``), error
bodies (``errors``), SSE framing (``sse``), the ``refs`` path routing (``refs``, ``middleware``), field masks
(``fields``) and response models (``schemas/``). HTTP only: it touches no disk, process or VM, runs no SQL
(``amber.store`` does) and starts nothing (``amber.server`` wires it). Every error is the contract's error body.
"""
