"""The native pipeline's phases, in order; each a module, each cached step going through ``CachedRunner``:

- ``base``: the root disk to start from (``preparing``): an OCI image imported once per manifest digest, a
  Dockerfile built by BuildKit and cached by image ID, or a parent template's disk chain;
- ``steps``: boot the build VM over the base and the cached layers (``vm_create``) and run every uncached step,
  each frozen into a layer keyed by its chain key (``step``);
- ``start``: the start command and the readiness probe (``startup``, ``readiness``);
- ``snapshot``: memory, device state and disk chain into the artifact directory (``snapshot``);
- ``finalize``: the final-artifact cache around ``start`` and ``snapshot``, the artifact's metadata
  (``amber.builds.artifact_metadata``) and the ``BuildArtifact`` (``finalize``).

``amber.builds.pipeline.native.NativeExecutor`` runs them over one ``Attempt`` and cleans up after it.
"""
