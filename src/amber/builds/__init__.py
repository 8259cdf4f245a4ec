"""Builds: a validated request becomes a template artifact.

``planning/`` is pure: a request becomes one ``BuildPlan`` (steps, Dockerfile, cache-key inputs, runtime
settings, VM shape, digests), plus the cache keys, the runtime-defaults rule and plan/validate rendering.
``service/`` accepts builds (plan made once, one transaction: template, build row with its plan, ``start``
entry), keeps their journal, cancels, retries, promotes, records outcomes and recovers after a crash;
``workers`` claim queued builds and run the pipeline on their stored plan with timeouts and leases; ``queue``
knows worker identities and dead owners; ``pipeline/`` does the effectful work, phase by phase; ``executor`` is
the seam between service and pipeline (``BuildJob``, ``BuildInputs``, ``BuildArtifact``);
``artifact_metadata`` reads and writes a template artifact's ``amber-artifact.json``; ``views`` renders records
as contract JSON; ``image_import`` composes ``amber.oci`` and ``amber.rootfs``. Every SQL statement is
``amber.store``'s. See ``docs/architecture.md``.
"""
