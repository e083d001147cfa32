"""``CuseServer(debug=True)``: each CUSE request and its reply logged as served (fusd.debug)."""

from __future__ import annotations

import logging
import os

from fusd_runtime.cuse import CuseServer
from fusd_runtime.examples import Hello

from .conftest import needs_cuse, unique_name


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@needs_cuse
def test_cuse_server_debug_logs_cuse_init_and_reads() -> None:
    dlog = logging.getLogger("fusd.debug")
    lines = Lines()
    dlog.addHandler(lines)
    old = dlog.level
    dlog.setLevel(logging.DEBUG)
    try:
        name = unique_name("debug")
        with CuseServer(debug=True, readers=1) as server:
            server.add(Hello(b"cuse debug\n"), name)
            fd = os.open(server.path(name), os.O_RDONLY)
            assert os.read(fd, 64) == b"cuse debug\n"
            os.close(fd)
    finally:
        dlog.removeHandler(lines)
        dlog.setLevel(old)
    text = "\n".join(lines.messages)
    assert "opcode: CUSE_INIT (4096)" in text and f"DEVNAME={name}" in text
    assert "opcode: READ (15), nodeid: 0" in text and 'data: "cuse debug\\n"' in text
    assert "reply to RELEASE" in text
