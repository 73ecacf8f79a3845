"""Durable upload state: manifest, its store, file identity, reconciliation."""

from resume.identity import FileIdentity, SourceChanged
from resume.manifest import SCHEMA_VERSION, Manifest, ManifestError, PartRecord
from resume.reconcile import ServerPart, reconcile
from resume.store import LockHeld, ManifestStore, default_state_dir

__all__ = [
    "SCHEMA_VERSION",
    "FileIdentity",
    "LockHeld",
    "Manifest",
    "ManifestError",
    "ManifestStore",
    "PartRecord",
    "ServerPart",
    "SourceChanged",
    "default_state_dir",
    "reconcile",
]
