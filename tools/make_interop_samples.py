"""Make the umockdev and evemu sample recordings in tests/data/interop/ (run in the CUSE guest, as root).

    ../shared/cusevm/run-in-vm.sh "$PWD/.venv/bin/python" tools/make_interop_samples.py tests/data/interop

umockdev-record needs a real character device with a sysfs entry, which a CUSE node
is: the gallery keyboard (examples/input_device.py) is served as /dev/fusd-kbd-rec and
recorded by the unmodified tools while "hi" is typed on it:

- ``kbd.umockdev``: ``umockdev-record /dev/fusd-kbd-rec`` (its sysfs description)
- ``kbd.ioctl``: ``umockdev-record --ioctl DEV=kbd.ioctl -- evemu-describe DEV``
- ``kbd.events``: ``umockdev-record --evemu-events DEV=kbd.events -- evtest DEV`` (evtest's output:
  ``evtest-umockdev.txt``)
- ``kbd.script``: ``umockdev-record --script DEV=kbd.script -- evtest DEV``
- ``kbd.evemu``: ``evemu-record DEV``
"""

import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import examples.input_device as gallery  # noqa: E402
from fusd_runtime.cuse import CuseServer  # noqa: E402

NAME = "fusd-kbd-rec"


def main(out: str) -> int:
    kb = gallery.VirtualKeyboard()

    def typing() -> None:
        deadline = time.time() + 60
        while kb.open_count < 1 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        kb.type_text("hi")

    def traced(cmd: list, interrupt: bool) -> str:
        t = threading.Thread(target=typing) if interrupt else None
        if t:
            t.start()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if t:
            t.join()
            time.sleep(3)
            p.send_signal(signal.SIGINT)  # evtest and evemu-record run until Ctrl-C
        output = p.communicate(timeout=120)[0]
        print(" ".join(cmd[:3]), "exit", p.returncode, flush=True)
        return output

    os.makedirs(out, exist_ok=True)
    with CuseServer() as server:
        server.add(kb, NAME)
        dev = server.path(NAME)
        with open(os.path.join(out, "kbd.umockdev"), "w") as f:
            f.write(traced(["umockdev-record", dev], interrupt=False))
        traced(["umockdev-record", "--ioctl", f"{dev}={out}/kbd.ioctl", "--", "evemu-describe", dev], interrupt=False)
        text = traced(["umockdev-record", "--evemu-events", f"{dev}={out}/kbd.events", "--", "evtest", dev],
                      interrupt=True)
        with open(os.path.join(out, "evtest-umockdev.txt"), "w") as f:
            f.write(text)
        traced(["umockdev-record", "--script", f"{dev}={out}/kbd.script", "--", "evtest", dev], interrupt=True)
        with open(os.path.join(out, "kbd.evemu"), "w") as f:
            f.write(traced(["evemu-record", dev], interrupt=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/interop"))
