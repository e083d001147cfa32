"""The fusd pytest plugin (entry point ``pytest11: fusd``): serve a device for one test.

    def test_mailbox(fusd_device):
        dev = fusd_device(Mailbox(), "mailbox")      # a real mount as root, the loopback otherwise
        with dev.open(os.O_RDWR) as f:
            f.write(b"hi")
            assert f.read(10) == b"hi"

Fixtures:
    ``fusd_device``: a factory ``fusd_device(device, name=None, *, transport=None, mode=None,
        timeout=30.0, minor=None) -> ServedDevice``; everything it served is stopped after
        the test (unmounted, nodes removed; the test errors if anything is left).
    ``fusd_backend``: the backend asked for ("auto", "loopback" or "kernel").

Choosing the backend (``fusd_runtime.testing.served``): ``@pytest.mark.fusd(backend=...,
transport=...)`` on a test or module, else ``--fusd-backend``/``--fusd-transport``,
else "auto" (the real kernel where this machine allows it, the loopback otherwise).
``--fusd-backend=all`` (or ``@pytest.mark.fusd(backend="all")``) runs each test once per
backend: the same body on the loopback and on the kernel.  A backend the machine cannot
provide skips the test with the reason.

When a test fails, the report shows the decoded FUSE requests and replies of every device
it served (``--fusd-trace-lines``, default 200; 0 turns it off).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional

import pytest

from ..device import Device
from .served import ServedDevice, Unavailable, choose, cuse_kernel_available, fuse_kernel_available, serve

_SERVED = pytest.StashKey[List[ServedDevice]]()
_CHOICES = ("auto", "loopback", "kernel", "all")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fusd", "fusd device tests")
    group.addoption("--fusd-backend", choices=_CHOICES, default=None,
                    help="where fusd_device serves: auto (kernel where allowed, else loopback), loopback, kernel, "
                         "or all (each test once per backend); default auto")
    group.addoption("--fusd-transport", choices=("auto", "fuse", "cuse"), default=None,
                    help="fuse or cuse (default auto: CUSE where /dev/cuse works, else FUSE)")
    group.addoption("--fusd-trace-lines", type=int, default=200, metavar="N",
                    help="decoded protocol lines shown for a failing test (0: none; default 200)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fusd(backend='auto', transport='auto'): where fusd_device serves this "
                                       "test's devices (backend: auto, loopback, kernel, all; transport: auto, "
                                       "fuse, cuse)")


def pytest_report_header(config: pytest.Config) -> str:
    fuse, cuse = fuse_kernel_available(), cuse_kernel_available()
    here = "kernel-cuse" if cuse is None else "kernel-fuse" if fuse is None else "loopback"
    option = config.getoption("--fusd-backend") or "auto"
    why = "" if here != "loopback" else f" (fuse: {fuse}; cuse: {cuse})"
    return f"fusd: --fusd-backend={option}; auto serves on {here} here{why}"


def _marker(node: Any) -> Any:
    return node.get_closest_marker("fusd")


def _asked(config: pytest.Config, marker: Any, key: str, option: str) -> Optional[str]:
    if marker is not None and key in marker.kwargs:
        return str(marker.kwargs[key])
    return config.getoption(option)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fusd_backend" not in metafunc.fixturenames:
        return
    backend = _asked(metafunc.config, _marker(metafunc.definition), "backend", "--fusd-backend")
    if backend == "all":
        metafunc.parametrize("fusd_backend", ["loopback", "kernel"], indirect=True)


@pytest.fixture
def fusd_backend(request: pytest.FixtureRequest) -> str:
    """The backend this test's devices are served on: "auto", "loopback" or "kernel"."""
    if hasattr(request, "param"):
        return str(request.param)
    backend = _asked(request.config, _marker(request.node), "backend", "--fusd-backend") or "auto"
    return "auto" if backend == "all" else backend


@pytest.fixture
def fusd_device(request: pytest.FixtureRequest, fusd_backend: str) -> Iterator[Callable[..., ServedDevice]]:
    """Serve a device for this test: ``fusd_device(device, name=None, *, transport=None, ...)``."""
    served: List[ServedDevice] = []
    request.node.stash[_SERVED] = served
    default_transport = _asked(request.config, _marker(request.node), "transport", "--fusd-transport") or "auto"

    def factory(device: Device, name: Optional[str] = None, *, transport: Optional[str] = None,
                mode: Optional[int] = None, timeout: float = 30.0, minor: Optional[int] = None) -> ServedDevice:
        try:
            choose(device, fusd_backend, transport or default_transport)
            dev = serve(device, name, backend=fusd_backend, transport=transport or default_transport, mode=mode,
                        timeout=timeout, minor=minor)
        except Unavailable as exc:
            pytest.skip(str(exc))
        served.append(dev)
        return dev

    try:
        yield factory
    finally:
        errors = []
        for dev in reversed(served):
            try:
                dev.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome: Any = yield
    report = outcome.get_result()
    lines = item.config.getoption("--fusd-trace-lines")
    if not report.failed or not lines:
        return
    for dev in item.stash.get(_SERVED, []):
        try:
            text = dev.trace(limit=lines)
        except Exception as exc:  # never hide the failure behind a trace problem
            text = f"(no trace: {exc!r})"
        report.sections.append((f"fusd protocol: {dev.name} ({dev.backend}-{dev.transport}, {report.when})",
                                text or "(no messages)"))
