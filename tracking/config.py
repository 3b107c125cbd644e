"""The ``tracking`` config group: where MLflow runs go (no MLflow import here)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class TrackingError(Exception):
    """The tracking store cannot be used (unreachable, not writable): one line for the user."""


def redact(uri: str | None) -> str | None:
    """``uri`` with its ``user:password@`` replaced by ``***@``: safe to log, print, record."""
    if not uri or "@" not in urllib.parse.urlsplit(uri).netloc:
        return uri
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


class TrackingMode(StrEnum):
    local = "local"     # a SQLite store under tracking.root
    server = "server"   # an MLflow tracking server at tracking.uri
    none = "none"       # no MLflow at all


@dataclass
class TrackingConfig:
    """The ``tracking`` group; also the plain values tracking/ works with."""

    mode: TrackingMode = TrackingMode.local
    uri: str | None = None
    experiment: str = "${data.name}"
    registered_model: str = "cnnsearch-${data.name}"
    root: str = "${paths.root}"   # the local store lives in <root>/mlflow

    @property
    def enabled(self) -> bool:
        return self.mode != TrackingMode.none

    @property
    def store_dir(self) -> Path:
        """Folder of the local store (``mlflow.db`` and artifacts)."""
        return Path(self.root).resolve() / "mlflow"

    @property
    def store_file(self) -> Path:
        """The local store's SQLite file."""
        return self.store_dir / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        if self.mode == TrackingMode.server:
            return self.uri or ""
        return self.uri or f"sqlite:///{self.store_file}"

    @property
    def display_uri(self) -> str:
        """The tracking URI without credentials."""
        return redact(self.tracking_uri)

    @property
    def store_exists(self) -> bool:
        """False for a local store not created yet (readers must not create it)."""
        return (self.mode != TrackingMode.local or bool(self.uri)
                or self.store_file.exists())

    @property
    def artifact_location(self) -> str | None:
        """Artifacts beside a local store; a server decides its own."""
        return (self.store_dir / "artifacts").as_uri() if self.mode == TrackingMode.local else None
