"""Audit devices: every request and response recorded, with secrets HMAC'd per device.

Core owns persistence (the audit table and each device's salt) and drives the
:class:`AuditBroker`; this package only formats, hashes and writes.
"""

from vaultraft.audit.broker import DEVICE_TYPES, AuditBroker, AuditFailed, normalize_path
from vaultraft.audit.entry import AuthInfo, hash_entry, request_entry, response_entry
from vaultraft.audit.file_device import FileDevice
from vaultraft.audit.hashing import Salt, hash_structure

__all__ = [
    "DEVICE_TYPES",
    "AuditBroker",
    "AuditFailed",
    "AuthInfo",
    "FileDevice",
    "Salt",
    "hash_entry",
    "hash_structure",
    "normalize_path",
    "request_entry",
    "response_entry",
]
