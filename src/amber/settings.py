"""The one settings object: every knob is an ``AMBER_*`` environment variable or a CLI flag."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service configuration. ``data_dir`` holds everything Amber writes (database, blobs, artifacts, VMs)."""

    model_config = SettingsConfigDict(env_prefix="AMBER_", extra="ignore")

    data_dir: Path = Path(".amber")
    database_url: str | None = None  # default: SQLite under data_dir
    host: str = "127.0.0.1"
    port: int = 3000
    workers: int | None = None  # in-process build workers; default from cores and memory
    accel: str | None = None  # "kvm" or "tcg"; default: kvm only where vmx/svm exist

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'amber.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
