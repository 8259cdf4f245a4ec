"""Dockerfile builds through the BuildKit inside Amber's managed dockerd: ``daemon`` (the dockerd process),
``session`` (secrets, per-registry credentials, tar output over a BuildKit session), ``context`` (build context
tars), ``progress`` (trace → ``LogEvent``s), ``access`` (pull access checked with the caller's credentials),
``build`` (the one entry point). Knows nothing of VMs or of the build service. See ``docs/buildkit.md``.
"""
