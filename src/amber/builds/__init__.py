"""Builds: a validated request becomes a template artifact.

``service`` accepts builds (one transaction: template, build row, ``start`` entry), cancels, retries, promotes,
records outcomes and recovers after a crash; ``workers`` claim queued builds and run the pipeline with
timeouts and leases; ``queue`` knows worker identities and dead owners; ``views`` renders records as contract
JSON; ``image_import`` composes ``amber.oci`` and ``amber.rootfs``; ``planning/`` is pure (request → steps,
Dockerfile, keys, runtime defaults, plan/validate); ``pipeline/`` does the effectful work. ``executor`` is the
seam between service and pipeline. Every SQL statement is ``amber.store``'s. See ``docs/architecture.md``.
"""
