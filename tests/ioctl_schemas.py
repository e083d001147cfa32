"""ioctl argument schemas shared by the FUSE (restricted) and CUSE (unrestricted) ioctl tests."""

from __future__ import annotations

import construct as cs

from fusd_runtime.ioctl import IN, INOUT, IOWR, OUT, Flex, Pointer

u32, s32, u64 = cs.Int32ul, cs.Int32sl, cs.Int64ul

# a transfer with pointers to a request buffer (in) and a reply buffer (out), like spi_ioc_transfer
xfer = cs.Struct("tx" / Pointer("tx_len", direction=IN), "rx" / Pointer("rx_len", direction=OUT),
                 "tx_len" / u32, "rx_len" / u32)
XFER = IOWR("X", 1, xfer.sizeof())

# two levels: a batch points to an array of segments, each pointing to its own buffer (inout)
segment = cs.Struct("buf" / Pointer("len", direction=INOUT), "len" / u32, "flags" / u32)
batch = cs.Struct("segs" / Pointer("count", target=segment, direction=INOUT), "count" / u32, "done" / u32)
BATCH = IOWR("X", 2, batch.sizeof())

# a flexible array member (like struct fiemap): the number's size is the header's
extent = cs.Struct("start" / u64, "length" / u64)
extents = cs.Struct("count" / u32, "mapped" / u32, "items" / Flex("count", extent))
EXTENTS = IOWR("X", 3, 8)
