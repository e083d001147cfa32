"""A model of the kernel's unrestricted ioctl loop (fs/fuse/ioctl.c ``fuse_do_ioctl``) for host-side tests.

The CUSE tier proves the protocol against the real kernel in a guest; this
model lets the planner's rounds be checked on any machine.  It follows the
kernel: copy the in ranges (EFAULT if one is not readable), re-send, and after
the last round copy the reply over the out ranges (EFAULT if one is not
writable).  The caller's memory is a bytearray; addresses are offsets into it,
the first page is unmapped (NULL), and ranges can be made read-only.
"""

from __future__ import annotations

import errno
from typing import Any, Callable, List, Optional, Tuple

from fusd_runtime.ioctl import IoctlRetry, plan_unrestricted, unrestricted_encoder

PAGE = 4096


class KernelModel:
    """The caller's memory and the kernel's retry loop over it."""

    def __init__(self, size: int = 3 * PAGE, readonly: Optional[List[Tuple[int, int]]] = None) -> None:
        self.mem = bytearray(size)
        self.readonly = list(readonly or [])
        self.rounds = 0
        self.history: List[Tuple[List[Tuple[int, int]], List[Tuple[int, int]]]] = []

    def put(self, addr: int, data: bytes) -> int:
        self.mem[addr:addr + len(data)] = data
        return addr

    def _check(self, addr: int, n: int, write: bool) -> None:
        if n and (addr < PAGE or addr + n > len(self.mem)):
            raise OSError(errno.EFAULT, f"[{addr}, {addr + n}) is not mapped")
        if write and any(a < addr + n and addr < a + m for a, m in self.readonly):
            raise OSError(errno.EFAULT, f"[{addr}, {addr + n}) is read-only")

    def call(self, spec: Any, arg: int, handler: Callable[[Any, Any], Any]) -> Any:
        """The ioctl's result (OSError as the caller would see it); ``self.rounds`` counts the retries."""
        in_iovs: List[Tuple[int, int]] = []
        out_iovs: List[Tuple[int, int]] = []
        while True:
            for a, n in in_iovs:
                self._check(a, n, False)
            data = b"".join(bytes(self.mem[a:a + n]) for a, n in in_iovs)
            plan = plan_unrestricted(spec, arg, data, sum(n for _, n in out_iovs))
            if plan.retry is not None:
                assert isinstance(plan.retry, IoctlRetry)
                self.rounds += 1
                in_iovs, out_iovs = plan.retry.in_iovs, plan.retry.out_iovs
                self.history.append((in_iovs, out_iovs))
                continue
            encoded = unrestricted_encoder(plan)(handler(None, plan.value))
            res, out = encoded if isinstance(encoded, tuple) else (encoded, b"")
            assert len(out) <= sum(n for _, n in out_iovs)
            for a, n in out_iovs:
                chunk, out = out[:n], out[n:]
                if chunk:
                    self._check(a, len(chunk), True)
                    self.mem[a:a + len(chunk)] = chunk
            return res

    @property
    def copied_in(self) -> List[Tuple[int, int]]:
        """The in ranges of the last round."""
        return self.history[-1][0] if self.history else []

    @property
    def copied_out(self) -> List[Tuple[int, int]]:
        """The out ranges of the last round."""
        return self.history[-1][1] if self.history else []
