"""Device mistakes are reported when the device is added (``Server.add``), not at the first system call.

Before these checks, a misspelt ``def raed`` answered EINVAL to every read forever
and a ``read(self, ctx, size)`` failed only when a client first read, with a
traceback from inside the session.  Adding a device does not need a mount, so
these tests need no kernel.
"""

from __future__ import annotations

import warnings

import construct as cs
import pytest

from fusd_runtime import Device, Server, fusd
from fusd_runtime.checks import DeviceError, DeviceWarning, check_device, describe_result
from fusd_runtime.cuse import CuseServer
from fusd_runtime.ioctl import ioctl


class Misspelt(Device):
    def raed(self, ctx, size, offset):
        return b"never served"


class WrongSignature(Device):
    def read(self, ctx, size):
        return b"x"


class HelperNextToRead(Device):
    def read(self, ctx, size, offset):
        return b""

    def reads(self):
        return 0


@pytest.mark.parametrize("server_class", [Server, CuseServer])
def test_misspelt_callback_refused_at_add(server_class) -> None:
    with pytest.raises(DeviceError) as info:
        server_class().add(Misspelt(), "misspelt")
    message = str(info.value)
    assert message.startswith("Misspelt.raed: looks like a misspelt read()")
    assert "rename it to read" in message and "_raed" in message


@pytest.mark.parametrize("server_class", [Server, CuseServer])
def test_wrong_signature_refused_at_add(server_class) -> None:
    with pytest.raises(DeviceError) as info:
        server_class().add(WrongSignature(), "wrong")
    assert str(info.value).startswith("WrongSignature.read(self, ctx, size) cannot be called as "
                                      "read(ctx, size, offset)")
    assert "define def read(self, ctx, size, offset)" in str(info.value)


def test_a_name_close_to_an_implemented_callback_only_warns() -> None:
    server = Server()
    with pytest.warns(DeviceWarning, match=r"HelperNextToRead\.reads: looks like a misspelt read\(\); "
                                           r"HelperNextToRead defines read too"):
        server.add(HelperNextToRead(), "helper")
    assert "helper" in server.devices()


def test_every_problem_in_one_line() -> None:
    class Several(Device):
        def close(self, ctx):
            pass

        def write(self, ctx, data, offset, *, flags):
            pass

        def on_poll(self, ctx, events):
            return 0

    with pytest.raises(DeviceError) as info:
        check_device(Several())
    message = str(info.value)
    assert "\n" not in message
    assert "Several.write(self, ctx, data, offset, *, flags) cannot be called" in message
    assert "Several.close: what other frameworks call close() is release() here" in message
    assert "Several.on_poll: looks like the callback poll()" in message


@pytest.mark.parametrize("body, expected", [
    ("read = b'hello'", "Bad.read is a bytes, not a method"),
    ("async def read(self, ctx, size, offset):\n        yield b''", "Bad.read is an async generator"),
    ("def read(self, ctx, size, offset):\n        yield b''", "Bad.read is a generator function"),
    ("def Read(self, ctx, size, offset):\n        return b''", "Bad.Read: looks like the callback read()"),
    ("def do_ioctl(self, ctx, cmd, arg, out_size):\n        return 0", "Bad.do_ioctl: looks like the callback ioctl()"),
    ("def fsycn(self, ctx, datasync):\n        pass", "Bad.fsycn: looks like a misspelt fsync()"),
])
def test_other_mistakes(body: str, expected: str) -> None:
    namespace: dict = {"Device": Device}
    exec(f"class Bad(Device):\n    {body}\n", namespace)
    with pytest.raises(DeviceError, match="^" + expected.replace("(", r"\(").replace(")", r"\)")):
        check_device(namespace["Bad"]())


def test_correct_devices_pass_silently() -> None:
    class Good(Device):
        seekable = True

        def __init__(self, rate: float = 1.0) -> None:
            self.rate = rate

        def open(self, ctx):
            ctx.state = 0

        def read(self, ctx, size, offset, *extra):  # more parameters with defaults are fine
            return b""

        def write(self, ctx, data, offset):
            return len(data)

        @staticmethod
        def poll(ctx, events):
            return 0

        def reading(self) -> float:  # a helper: not close enough to any callback
            return self.rate

        def _raed(self):  # private: never checked
            pass

        @ioctl(0x80086B01, cs.Int64ul)
        def get_rate(self, ctx, value):
            return 0

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_device(Good())


def test_declared_ioctl_handler_signature() -> None:
    class BadHandler(Device):
        @ioctl(0x80086B01, cs.Int64ul)
        def get_rate(self, ctx):
            return 0

    with pytest.raises(DeviceError, match=r"BadHandler\.get_rate\(self, ctx\) cannot be called as "
                                          r"get_rate\(ctx, value\).*declared ioctl 0x80086b01"):
        check_device(BadHandler())


def test_methods_never_called_warn() -> None:
    class Mapper(Device):
        def mmap(self, ctx):
            pass

    with pytest.warns(DeviceWarning, match=r"Mapper\.mmap: the runtime never calls mmap\(\)"):
        check_device(Mapper())


def test_fusd_callback_table_checked_at_register() -> None:
    server = Server()
    with pytest.raises(DeviceError, match=r"unknown callback 'raed' \(did you mean 'read'\?"):
        fusd.register("hello", 0o666, {"raed": lambda file, length, offset: b""}, server=server)
    with pytest.raises(DeviceError, match=r"fusd callback write\(file, data\) cannot be called as "
                                          r"write\(file, data, offset\)"):
        fusd.register("hello", 0o666, {"write": lambda file, data: len(data)}, server=server)
    assert fusd.register("hello", 0o666, {"read": lambda file, length, offset: b""}, server=server) > 0


def test_describe_result_names_device_callback_type_and_expectation() -> None:
    dev = Device()
    dev.name = "sensor"
    assert describe_result(dev, "read", "21.5 C\n") == (
        "device 'sensor': read() returned str '21.5 C\\n'; expected bytes, bytearray or memoryview of at most "
        "`size` bytes (or ctx.defer())")
