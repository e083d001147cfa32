"""ioctls: command numbers, and arguments declared with a schema instead of handled as bytes.

A device may describe an ioctl's argument with a ``construct`` schema — a fixed
struct (or a :class:`CStruct` laid out like its C definition), ``Pointer``
fields to buffers or arrays whose length and direction may depend on the other
fields, a ``Flex`` tail — and get decoded records instead of bytes.  The
runtime copies the argument in and out itself: on FUSE through the kernel's
restricted ``_IOC_SIZE`` copy, on CUSE through the FUSE_IOCTL_RETRY protocol,
chasing the pointers the schema declares.  See docs/ioctl.md.

One module per job:

- ``numbers``: ``IO``/``IOR``/``IOW``/``IOWR`` and ``ioc_dir``/``ioc_size``/...
- ``schema``: directions, ``Pointer``, ``Flex``, ``Sized``.
- ``clayout``: ``CStruct`` and the C types ``c.int``... (x86-64 LP64 padding).
- ``record``: the generated record classes decoded structs become.
- ``nodes``: per construct type, its struct format and generated code.
- ``codec``: a schema compiled into ``struct.Struct`` code, pointer slots, field spans.
- ``declare``: ``Arg``, ``@ioctl``, ``Sized`` families, a device's table (MRO, undeclaring).
- ``restricted``: the handler's result conventions; the FUSE path, one generated function.
- ``retry``: ``IoctlRetry`` and the kernel's limits.
- ``walk``: the CUSE (unrestricted) rounds for declared arguments.

The session calls ``ioctl_table``, ``check_ioctls``, ``call_declared``,
``restricted_decode``/``restricted_encoder``, ``plan_unrestricted``/
``unrestricted_encoder``, ``emulate_restricted`` and ``IoctlRetry``.
"""

from .clayout import CStruct, CType, c
from .codec import Codec, ConstructCodec, Record, compile_schema
from .declare import Arg, FamilySpec, FamilyTable, IoctlSpec, IoctlTable, check_ioctls, ioctl, ioctl_table
from .numbers import (
    IO,
    IOC_NONE,
    IOC_READ,
    IOC_SIZEMASK,
    IOC_WRITE,
    IOR,
    IOW,
    IOWR,
    ioc_dir,
    ioc_nr,
    ioc_size,
    ioc_type,
    with_size,
)
from .restricted import call_declared, restricted_decode, restricted_encoder, split_result
from .retry import MAX_BYTES, MAX_IOV, IoctlRetry, emulate_restricted, retry_problem
from .schema import DIRECTIONS, IN, INOUT, OUT, Flex, Pointer, Sized
from .walk import Plan, plan_unrestricted, unrestricted_encoder

__all__ = [
    "IO", "IOR", "IOW", "IOWR", "IOC_NONE", "IOC_READ", "IOC_WRITE", "IOC_SIZEMASK",
    "ioc_dir", "ioc_nr", "ioc_size", "ioc_type", "with_size",
    "IN", "OUT", "INOUT", "DIRECTIONS", "Pointer", "Flex", "Sized", "CStruct", "CType", "c",
    "Arg", "IoctlSpec", "FamilySpec", "IoctlTable", "FamilyTable", "ioctl", "ioctl_table", "check_ioctls",
    "Codec", "ConstructCodec", "Record", "compile_schema",
    "call_declared", "split_result", "restricted_decode", "restricted_encoder",
    "IoctlRetry", "MAX_IOV", "MAX_BYTES", "retry_problem", "emulate_restricted",
    "Plan", "plan_unrestricted", "unrestricted_encoder",
]
