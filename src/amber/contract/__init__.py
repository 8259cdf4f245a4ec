"""The contract floor: the vocabulary every other package speaks. Pure: no I/O, no processes, no database, and no
import from any other ``amber`` package (``lint-imports`` enforces it).

Modules, one concept each:

- ``request``      CreateTemplateRequest (+ ``BuildConfig``), parsing, the storable definition
- ``steps``        the 15 declarative steps and their ``mode`` values
- ``sources``      the build context, source and backend kinds, Dockerfile ``FROM`` images
- ``runtime``      ``runtime_config``, readiness probes and their defaults, visible runtime-default keys
- ``credentials``  ``base_image_auth``, ``registry_auth``, ``build_secrets`` (values are ``SecretStr``)
- ``validation``   the content rules (R1-R59 that need no database) and the one definition → request function
- ``images``       the image reference grammar and the one ``registry_host`` rule; ``template_refs`` template
                   refs and what a ``base_image`` names
- ``dockerfile``   what a Dockerfile imports (stages, ARG expansion) and the request rules that depend on it
- ``plan``         TemplateBuildPlanResponse / TemplateBuildValidationResponse
- ``catalog``      request bodies of the management endpoints (tags, rename, visibility, claims, cancel,
                   retry, promote, blob preflight) and ``Visibility``
- ``status``       build status; ``logs`` the log entry vocabulary and ``LogEvent``; ``failures`` failure
                   phases, ``BuildFailed`` and TemplateFailureDetail
- ``errors``       ``InvalidRequest`` and ``InvalidReferenceError``; ``jsonline`` the line-safe JSON of log entries
- ``machines``     the machine, file, process and snapshot API models (``machines-api.md``); ``warm_pools`` the
                   warm pool API models

Guarantees: every model is strict; credential and secret values never appear in ``repr``, error messages or
``persistable_request``; every rule failure names the request field it is about.
"""
