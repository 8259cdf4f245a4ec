"""The ``fields`` mask of template reads (R11): which TemplateInfo keys a caller asked for. HTTP only."""

from __future__ import annotations

from typing import Any

from amber.store.errors import Invalid

INFO_FIELDS = (
    "id",
    "name",
    "description",
    "tags",
    "default_tag",
    "builtin",
    "canonical_ref",
    "namespace_slug",
    "visibility",
)


def apply_fields(info: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """``info`` narrowed to ``fields`` (in their order; None = everything)."""
    if fields is None:
        return info
    return {k: info[k] for k in fields if k in info}


def parse_fields(raw: str | None) -> list[str] | None:
    """The ``fields`` mask (R11). Unknown names → ``Invalid`` with code ``invalid_fields``."""
    if raw is None:
        return None
    names = [f.strip() for f in raw.split(",") if f.strip()]
    unknown = [f for f in names if f not in INFO_FIELDS]
    if unknown or not names:
        raise Invalid(
            f"fields: unsupported field(s) {', '.join(unknown) or '(empty)'}; supported: {', '.join(INFO_FIELDS)}",
            code="invalid_fields",
            field="fields",
        )
    return list(dict.fromkeys(names))
