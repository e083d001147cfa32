"""Any recording file, by its content: fusd captures, umockdev ioctl/script files, evemu files.

Several files make one recording (``umockdev-record`` writes the ioctls and the
reads to separate files; evemu splits description and events): their operations
are merged into one open, ioctls first.  A capture is one recording by itself.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

from .capture import RecordingError, from_capture
from .evemu import from_evemu, is_evemu
from .script import OpenScript, Recording
from .umockdev import from_umockdev, is_ioctl_file, is_script_file

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def kind_of(path: str) -> str:
    """"capture", "umockdev" or "evemu", from the file's first bytes; RecordingError otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head.startswith(PCAPNG_MAGIC):
        return "capture"
    text = head.decode("utf-8", "replace")
    if is_evemu(text):
        return "evemu"
    if is_ioctl_file(head) or is_script_file(head):
        return "umockdev"
    if "read(" in text or "write(" in text or "readv(" in text:
        return "capture"  # an strace log
    raise RecordingError(f"{path}: neither a fusd capture, an umockdev ioctl/script file nor an evemu file")


def load_recording(paths: Union[str, Sequence[str]], name: Optional[str] = None, *,
                   connection: Optional[int] = None) -> Recording:
    """The Recording in ``paths`` (one capture, or umockdev/evemu files to merge)."""
    files = [paths] if isinstance(paths, str) else list(paths)
    if not files:
        raise RecordingError("no recording given")
    kinds = [kind_of(p) for p in files]
    if "capture" in kinds:
        if len(files) != 1:
            raise RecordingError("a capture is a recording by itself: give it alone")
        return from_capture(files[0], name, connection=connection)
    parts: List[Recording] = []
    umock = [p for p, k in zip(files, kinds) if k == "umockdev"]
    evemu = [p for p, k in zip(files, kinds) if k == "evemu"]
    if umock:  # first: its @DEV line names the device
        parts.append(from_umockdev(umock, name))
    if evemu:
        parts.append(from_evemu(evemu, name))
    merged = OpenScript(flags=parts[0].opens[0].flags)
    for part in parts:  # ioctls of every file first (open-time queries), then reads/writes in order
        merged.ops += [op for op in part.opens[0].ops if op.kind == "ioctl"]
    for part in parts:
        merged.ops += [op for op in part.opens[0].ops if op.kind != "ioctl"]
    return Recording(name=name or parts[0].name, opens=[merged], transport="cuse",
                     source=", ".join(files))


__all__ = ["kind_of", "load_recording"]
