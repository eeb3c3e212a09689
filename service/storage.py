"""Free space of the disks the service writes to: the gallery's folder and the uploads' temporary folder.

``/ready`` reports both and fails (503, code ``low_disk_space``) when either has less than
``WHALEID_MIN_FREE_BYTES``: an orchestrator stops sending enrolments before the disk fills, instead of
each one failing with 507.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

MiB = 1024 * 1024
LOW_DISK = "low disk space: {where} below WHALEID_MIN_FREE_BYTES ({limit_mib:.0f} MiB)"


def tmp_folder(tmp_dir: Path | None) -> Path:
    """The uploads' temporary folder: ``tmp_dir``, else the system's (``TMPDIR``)."""
    return Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())


def disk_report(folders: dict[str, Path], min_free_bytes: int) -> tuple[dict[str, dict], list[str]]:
    """Free space of each folder's filesystem.

    Args:
        folders: ``name -> folder``, e.g. ``{"gallery": ..., "tmp": ...}``.
        min_free_bytes: below this many free bytes a folder counts as low.

    Returns:
        ``(report, low)``: ``name -> {"path", "free_bytes", "total_bytes"}`` (``free_bytes`` None and an
        ``error`` when the folder cannot be read), and the names of the folders below the threshold
        or unreadable.
    """
    report, low = {}, []
    for name, folder in folders.items():
        try:
            usage = shutil.disk_usage(folder)
        except OSError as exc:
            report[name] = {"path": str(folder), "free_bytes": None, "total_bytes": None, "error": exc.strerror}
            low.append(name)
            continue
        report[name] = {"path": str(folder), "free_bytes": usage.free, "total_bytes": usage.total}
        if usage.free < min_free_bytes:
            low.append(name)
    return report, low


def low_disk_detail(report: dict[str, dict], low: list[str], min_free_bytes: int) -> str:
    """The stable message of a failed readiness, naming the low folders and their free MiB."""
    where = ", ".join(
        f"{name} folder has {report[name]['free_bytes'] / MiB:.0f} MiB free"
        if report[name]["free_bytes"] is not None
        else f"{name} folder unreadable"
        for name in low
    )
    return LOW_DISK.format(where=where, limit_mib=min_free_bytes / MiB)
