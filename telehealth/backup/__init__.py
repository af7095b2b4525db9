"""Backup and restore of the index: a database dump plus a manifest of the objects.

Objects themselves are left to the S3 system's own replication and versioning (MinIO site
replication, bucket versioning): copying hundreds of thousands of studies through the hub
would be slower and no safer. The manifest lets a restore prove the store still holds every
object the restored index names.
"""

from telehealth.backup.service import (
    BackupSummary,
    RestoreRefused,
    RestoreSummary,
    backup,
    restore_database,
    verify_objects,
)

__all__ = [
    "BackupSummary",
    "RestoreRefused",
    "RestoreSummary",
    "backup",
    "restore_database",
    "verify_objects",
]
