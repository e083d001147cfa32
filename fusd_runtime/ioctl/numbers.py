"""ioctl command numbers: build them (``IOR('p', 9, 36)``) and take them apart.

The encoding is ``asm-generic/ioctl.h``'s (x86, arm, riscv...): 8 bits number,
8 bits type, 14 bits size, 2 bits direction.  On the FUSE transport the kernel
copies ``_IOC_SIZE(cmd)`` bytes in (``_IOC_WRITE``) and out (``_IOC_READ``);
numbers older than ``_IOC`` (tty ``0x5401``, SCSI generic ``0x2285``) encode
neither and reach a FUSE device without any data.
"""

from __future__ import annotations

from typing import Union

from fusd_wire.constants import _IOC, _IOC_DIRSHIFT, _IOC_NONE, _IOC_READ, _IOC_SIZESHIFT, _IOC_TYPESHIFT, _IOC_WRITE

#: ``_IOC_DIR`` values: no data, the caller writes (copied in), the caller reads (copied out)
IOC_NONE, IOC_WRITE, IOC_READ = _IOC_NONE, _IOC_WRITE, _IOC_READ
#: the bits of ``_IOC_SIZE`` in a number (a family of numbers differing only there: ``SPI_IOC_MESSAGE(N)``)
IOC_SIZEMASK = 0x3FFF << _IOC_SIZESHIFT
TypeLetter = Union[str, int]


def _type(t: TypeLetter) -> int:
    return ord(t) if isinstance(t, str) else int(t)


def IO(type_: TypeLetter, nr: int) -> int:
    """``_IO(type, nr)``: no argument data."""
    return _IOC(_IOC_NONE, _type(type_), nr, 0)


def IOR(type_: TypeLetter, nr: int, size: int) -> int:
    """``_IOR(type, nr, size)``: the device writes ``size`` bytes back to the caller."""
    return _IOC(_IOC_READ, _type(type_), nr, size)


def IOW(type_: TypeLetter, nr: int, size: int) -> int:
    """``_IOW(type, nr, size)``: the caller passes ``size`` bytes in."""
    return _IOC(_IOC_WRITE, _type(type_), nr, size)


def IOWR(type_: TypeLetter, nr: int, size: int) -> int:
    """``_IOWR(type, nr, size)``: ``size`` bytes in, then ``size`` bytes out."""
    return _IOC(_IOC_READ | _IOC_WRITE, _type(type_), nr, size)


def ioc_dir(cmd: int) -> int:
    """``_IOC_DIR(cmd)``: IOC_NONE, IOC_WRITE, IOC_READ or both."""
    return (cmd >> _IOC_DIRSHIFT) & 0x3


def ioc_size(cmd: int) -> int:
    """``_IOC_SIZE(cmd)``: the argument size the number encodes."""
    return (cmd >> _IOC_SIZESHIFT) & 0x3FFF


def ioc_type(cmd: int) -> int:
    """``_IOC_TYPE(cmd)``."""
    return (cmd >> _IOC_TYPESHIFT) & 0xFF


def ioc_nr(cmd: int) -> int:
    """``_IOC_NR(cmd)``."""
    return cmd & 0xFF


def with_size(cmd: int, size: int) -> int:
    """``cmd`` with its ``_IOC_SIZE`` replaced by ``size`` (``SPI_IOC_MESSAGE(n)`` from ``SPI_IOC_MESSAGE(0)``)."""
    if not 0 <= size <= 0x3FFF:
        raise ValueError(f"an ioctl number encodes sizes 0..16383, not {size}")
    return (cmd & ~IOC_SIZEMASK & 0xFFFFFFFF) | (size << _IOC_SIZESHIFT)
