"""The registry: which devices exist, under which names, with which attributes.

Names may contain slashes (``input/event0``): the FUSE transport shows them as
subdirectories of the mount.  Each name gets a stable node id for the kernel.
The registry knows nothing of transports; sessions look devices up here.
"""

from __future__ import annotations

import stat
import threading
import time
from typing import Dict, Iterator, List, Optional

from .device import Device

ROOT_ID = 1


class Node:
    """A directory or a device file in the device tree."""

    __slots__ = ("nodeid", "name", "parent", "children", "device", "mode", "uid", "gid", "mtime")

    def __init__(self, nodeid: int, name: str, parent: Optional[Node], device: Optional[Device],
                 mode: int, uid: int, gid: int) -> None:
        self.nodeid = nodeid
        self.name = name
        self.parent = parent
        self.children: Dict[str, Node] = {}
        self.device = device
        self.mode = mode  # full st_mode (type bits included)
        self.uid = uid
        self.gid = gid
        self.mtime = time.time()

    @property
    def is_dir(self) -> bool:
        return self.device is None

    @property
    def path(self) -> str:
        parts: List[str] = []
        node: Optional[Node] = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))


class Registry:
    """Thread-safe name -> device tree with node ids."""

    def __init__(self, uid: int, gid: int, dir_mode: int = 0o755) -> None:
        self.lock = threading.RLock()
        self.uid, self.gid = uid, gid
        self.dir_mode = dir_mode
        self.root = Node(ROOT_ID, "", None, None, stat.S_IFDIR | dir_mode, uid, gid)
        self.nodes: Dict[int, Node] = {ROOT_ID: self.root}
        self._next_id = ROOT_ID + 1
        #: bumped by every add and remove: caches of node attributes compare it to stay valid
        self.generation = 0

    @staticmethod
    def split(name: str) -> List[str]:
        """Check a device name and split it into path components."""
        parts = [p for p in name.strip("/").split("/") if p]
        if not parts or any(p in (".", "..") or "\0" in p for p in parts):
            raise ValueError(f"bad device name {name!r}")
        return parts

    def add(self, name: str, device: Device, mode: int, uid: int, gid: int) -> Node:
        """Register ``device`` under ``name`` (creating parent directories)."""
        parts = self.split(name)
        with self.lock:
            parent = self.root
            for comp in parts[:-1]:
                child = parent.children.get(comp)
                if child is None:
                    child = self._new(comp, parent, None, stat.S_IFDIR | self.dir_mode, self.uid, self.gid)
                elif not child.is_dir:
                    raise ValueError(f"{name!r}: {child.path!r} is a device, not a directory")
                parent = child
            if parts[-1] in parent.children:
                raise ValueError(f"a device or directory named {name!r} already exists")
            return self._new(parts[-1], parent, device, stat.S_IFREG | (mode & 0o7777), uid, gid)

    def _new(self, name: str, parent: Node, device: Optional[Device], mode: int, uid: int, gid: int) -> Node:
        node = Node(self._next_id, name, parent, device, mode, uid, gid)
        self._next_id += 1
        parent.children[name] = node
        parent.mtime = time.time()
        self.nodes[node.nodeid] = node
        self.generation += 1
        return node

    def remove(self, name: str) -> List[Node]:
        """Unregister the device ``name``; returns the nodes removed (device, then empty parents)."""
        parts = self.split(name)
        with self.lock:
            node = self.lookup_path(parts)
            if node is None or node.is_dir:
                raise KeyError(name)
            removed = []
            while node is not None and node.parent is not None and (not node.is_dir or not node.children):
                del node.parent.children[node.name]
                node.parent.mtime = time.time()
                del self.nodes[node.nodeid]
                removed.append(node)
                node = node.parent
            self.generation += 1
            return removed

    def lookup_path(self, parts: List[str]) -> Optional[Node]:
        node: Optional[Node] = self.root
        for comp in parts:
            if node is None:
                return None
            node = node.children.get(comp)
        return node

    def get(self, nodeid: int) -> Optional[Node]:
        return self.nodes.get(nodeid)

    def find(self, device: Device) -> Optional[Node]:
        with self.lock:
            for node in self.nodes.values():
                if node.device is device:
                    return node
        return None

    def devices(self) -> Iterator[Node]:
        with self.lock:
            nodes = list(self.nodes.values())
        return (n for n in nodes if not n.is_dir)
