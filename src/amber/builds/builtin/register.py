"""Registering this host's builtin templates in the catalog (``amber serve`` startup, ``amber.server``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from amber.builds.builtin.build import BuiltinMissing, load_builtin
from amber.builds.builtin.definition import BUILTINS
from amber.contract.template_refs import SYSTEM_NAMESPACE
from amber.store import catalog
from amber.store.database import Database
from amber.vm import TemplateArtifact, VMError

log = logging.getLogger("amber.builtin")


def register_builtins(db: Database, data_dir: Path) -> dict[str, catalog.Registration | None]:
    """Register every builtin built in ``data_dir`` (``amber setup-base``) as ``nullspace/<name>``: public,
    ``builtin: true``, its tags on the current artifact. A builtin that is not built here is skipped with a
    warning (None in the result): the server still starts, and a catalog row another host registered stays."""
    outcomes: dict[str, catalog.Registration | None] = {}
    for definition in BUILTINS:
        try:
            built = load_builtin(data_dir.resolve(), definition.name)
            TemplateArtifact.load(built.directory)  # every file present with its recorded size
        except (BuiltinMissing, VMError) as exc:
            log.warning("builtin template %s/%s is not available on this host: %s", SYSTEM_NAMESPACE,
                        definition.name, exc)
            outcomes[definition.name] = None
            continue
        record = catalog.BuiltinTemplate(
            name=built.name,
            description=built.description,
            artifact_id=built.artifact_id,
            build_id=built.build_id,
            storage_dir=str(built.directory),
            runtime_defaults=built.runtime_defaults,
            size_bytes=built.size_bytes,
            built_at=datetime.fromtimestamp(built.built_at, UTC),
            default_tag=built.default_tag,
            tags=built.tags,
        )
        with db.session() as session:
            outcome = catalog.register_builtin(session, record)
        log.info("builtin template %s/%s (%s): %s", SYSTEM_NAMESPACE, built.name, built.artifact_id, outcome.value)
        outcomes[definition.name] = outcome
    return outcomes
