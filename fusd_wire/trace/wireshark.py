"""A Wireshark dissector for our captures, generated from the opcode table.

    python -m fusd_wire wireshark > ~/.local/lib/wireshark/plugins/fuse.lua

The output is one Lua file: generated data tables, then the hand-written engine
(``wireshark_engine.lua``) that walks them.  Everything about a message's layout comes
from the tables, which are derived here from what the codec itself uses:

- every struct *as each protocol minor (and INIT flag) sees it*, from ``layouts.layout``
  (so 7.8's 120-byte ``fuse_entry_out`` and 7.15's raw-``iovec`` retries are just other
  layouts, not Lua logic);
- every opcode's request and reply parts and every notification's body, from ``OPS`` and
  ``NOTIFICATIONS``; a part's presence predicate (``when``) by its function's name, each
  with a few lines of Lua below (generation fails for a predicate without them);
- field display (hex flags, octal modes) as ``decode``'s text form shows them; opcode, notification
  and errno names from the constants.

The engine implements what is code rather than data in ``parts.py``/``codec.py``: the
framing of names, payloads, dirent lists, the CUSE info blob, security contexts and
request extensions; INIT's self-stated minor; pairing by unique per connection and
following INIT/CUSE_INIT to the negotiated protocol.  A connection's starting protocol is
read from the interface description our recorder writes (``fuse minor=45 flags=0x...``).

Field names follow the ``decode --json`` body: ``fuse.<part>.<field path>``, e.g.
``fuse.fuse_read_in.size``, ``fuse.fuse_entry_out.attr.ino``, ``fuse.dirents.name``,
``fuse.name``, ``fuse.data``; header fields are ``fuse.unique``, ``fuse.opcode`` (also on
replies: the request's), ``fuse.nodeid``, ``fuse.error``, ``fuse.notify_code``; links
``fuse.request_in``/``fuse.response_in``, ``fuse.latency``.
"""

from __future__ import annotations

import errno as _errno
import json
import sys
from importlib import resources
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import construct as cs

from .. import constants as C
from ..codec import PartContext
from ..opcodes import NOTIFICATIONS, OPS
from ..parts import Array, Data, Dirents, KeyValues, Name, Part, Secctx, Struct
from ..schemas import STRUCTS
from .render import _fmt_value

MINORS = range(0, C.FUSE_KERNEL_MINOR_VERSION + 1)

#: Lua for each presence predicate of the opcode table (``Part.when``), by function name:
#: ``ctx.parts`` (this message's structs so far), ``ctx.request`` (a reply's request parts,
#: nil if unknown), ``ctx.minor``, ``ctx.flo``/``ctx.fhi`` (negotiated flags, low/high 32 bits).
PREDICATES: Dict[str, str] = {
    "_getxattr_size_query": "local r = ctx.request\n"
                            "  return r == nil or r.fuse_getxattr_in == nil or r.fuse_getxattr_in.size == 0",
    "_getxattr_value": "return not P._getxattr_size_query(ctx)",
    "_ioctl_retry": f"return bit.band(ctx.parts.fuse_ioctl_out.flags, {int(C.IoctlFlags.FUSE_IOCTL_RETRY)}) ~= 0",
    "_ioctl_done": "return not P._ioctl_retry(ctx)",
    "_legacy_secctx": f"return bit.band(ctx.fhi, {int(C.InitFlags.FUSE_SECURITY_CTX) >> 32}) ~= 0 "
                      "and ctx.minor >= 36 and ctx.minor < 38",
}

_KINDS = {"B": "u8", "H": "u16", "L": "u32", "I": "u32", "Q": "u64", "b": "s8", "h": "s16", "l": "s32",
          "i": "s32", "q": "s64"}
_PROTOFIELD = {"u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64", "s8": "int8", "s16": "int16",
               "s32": "int32", "s64": "int64"}


class GenerationError(RuntimeError):
    """The table holds something the generator cannot express (a new part kind or predicate)."""


def _kind(con: Any, where: str) -> str:
    if isinstance(con, cs.FormatField) and con.fmtstr[0] == "<" and con.fmtstr[1:] in _KINDS:
        return _KINDS[con.fmtstr[1:]]
    raise GenerationError(f"{where}: no Lua kind for {con!r}")


class Generator:
    """Collects fields, layouts and their per-minor variants while walking the table."""

    def __init__(self) -> None:
        self.fields: Dict[str, Tuple[str, str, str]] = {}  # abbrev -> (kind, label, base)
        self.layouts: List[str] = []  # Lua table constructors, by index - 1
        self._layout_ids: Dict[str, int] = {}
        self._by_object: Dict[Tuple[int, str], Tuple[cs.Struct, int]] = {}
        self.variants: Dict[str, str] = {}  # variant set name -> Lua
        self._variant_ids: Dict[str, str] = {}

    # ---------------------------------------------------------------- fields
    def field(self, abbrev: str, kind: str, label: Optional[str] = None) -> str:
        label = label or abbrev.rsplit(".", 1)[-1]
        base = "base.NONE"
        if kind in _PROTOFIELD:
            b = _int_base(label)
            base = "base.DEC" if kind[0] == "s" else {"hex": "base.HEX", "oct": "base.OCT"}.get(b, "base.DEC")
        spec = (kind, label, base)
        old = self.fields.setdefault(abbrev, spec)
        if old != spec:
            raise GenerationError(f"field {abbrev} is both {old} and {spec}")
        return abbrev

    # ---------------------------------------------------------------- layouts
    def layout(self, con: cs.Struct, path: str) -> int:
        """The Lua layout of ``con`` with field names under ``path``; deduplicated; returns its index."""
        key = (id(con), path)
        hit = self._by_object.get(key)
        if hit is not None:
            return hit[1]
        idx = self._layout(con, path)
        self._by_object[key] = (con, idx)  # keeps ``con`` alive so its id stays unique
        return idx

    def _layout(self, con: cs.Struct, path: str) -> int:
        items = []
        for sc in con.subcons:
            name = sc.name
            inner = sc.subcon if isinstance(sc, cs.Renamed) else sc
            abbrev = f"{path}.{name}"
            if name.startswith("_"):  # __spare0, __reserved: skipped, as in the decoder's output
                items.append(f'{{k="skip", n="{name}", s={inner.sizeof()}}}')
            elif isinstance(inner, cs.Struct):
                self.field(abbrev, "none")
                items.append(f'{{f="{abbrev}", k="struct", n="{name}", s={inner.sizeof()}, '
                             f'sub=L[{self.layout(inner, abbrev)}]}}')
            elif isinstance(inner, cs.Array):
                kind = _kind(inner.subcon, abbrev)
                self.field(abbrev, kind)
                items.append(f'{{f="{abbrev}", k="array", n="{name}", s={inner.sizeof()}, c={inner.count}, '
                             f'e="{kind}"}}')
            else:
                kind = _kind(inner, abbrev)
                self.field(abbrev, kind)
                items.append(f'{{f="{abbrev}", k="{kind}", n="{name}", s={inner.sizeof()}}}')
        lua = f"{{size={con.sizeof()}, " + ", ".join(items) + "}"
        if lua not in self._layout_ids:
            self.layouts.append(lua)
            self._layout_ids[lua] = len(self.layouts)
        return self._layout_ids[lua]

    def variant(self, path: str, make: Callable[[PartContext], cs.Struct]) -> str:
        """The per-minor (and per-flag) layouts of one part: ``make(ctx)`` for every protocol.

        Returns the Lua name of the variant set: ``{mlo=, mhi=, plain={{from_minor, L}...},
        flagged={...}}``; ``flagged`` applies when a negotiated flag in ``mlo``/``mhi`` is set.
        """
        def ranges(flags: int) -> List[Tuple[int, int]]:
            out: List[Tuple[int, int]] = []
            for minor in MINORS:
                idx = self.layout(make(PartContext(minor, flags)), path)
                if not out or out[-1][1] != idx:
                    out.append((minor, idx))
            return out

        plain = ranges(0)
        mask = 0
        for bit in range(64):
            if ranges(1 << bit) != plain:
                mask |= 1 << bit
        body = "plain={" + ", ".join(f"{{{m}, L[{i}]}}" for m, i in plain) + "}"
        if mask:
            body += ", flagged={" + ", ".join(f"{{{m}, L[{i}]}}" for m, i in ranges(mask)) + "}"
        lua = f"{{mlo={mask & 0xFFFFFFFF}, mhi={mask >> 32}, {body}}}"
        if lua not in self._variant_ids:
            name = f"V[{len(self._variant_ids) + 1}]"
            self._variant_ids[lua] = name
            self.variants[name] = lua
        return self._variant_ids[lua]

    # ---------------------------------------------------------------- parts
    def part(self, part: Part) -> str:
        """One part as a Lua table for the engine."""
        common = f'n="{part.name}"'
        if part.when is not None:
            pred = getattr(part.when, "__name__", "")
            if pred not in PREDICATES:
                raise GenerationError(f"part {part.name!r}: predicate {pred or part.when!r} has no Lua in "
                                      "wireshark.PREDICATES (give it a named function and its Lua)")
            common += f', when="{pred}"'
        if part.length is not None:
            common += f', len={{"{part.length[0]}", "{part.length[1]}"}}'
        path = f"fuse.{part.name}"
        if isinstance(part, Struct):
            self.field(path, "none")
            v = self.variant(path, part.construct)
            return f'{{k="struct", {common}, d="{part.describe()}", f="{path}", v={v}}}'
        if isinstance(part, Name):
            return f'{{k="name", {common}, d="{part.describe()}", f="{self.field(path, "string")}"}}'
        if isinstance(part, Data):
            return f'{{k="data", {common}, d="{part.describe()}", f="{self.field(path, "bytes")}"}}'
        if isinstance(part, Array):
            cnt = f'cnt={{"{part.count_field[0]}", "{part.count_field[1]}"}}'
            if part.element == "uint64_t":
                return f'{{k="array", {common}, d="{part.describe()}", {cnt}, e="u64", f="{self.field(path, "u64")}"}}'
            self.field(path, "none")
            element = part.element
            v = self.variant(path, lambda ctx: _element_layout(element, ctx))
            return f'{{k="array", {common}, d="{part.describe()}", {cnt}, f="{path}", v={v}}}'
        if isinstance(part, Dirents):
            self.field(path, "none")
            v = self.variant(path, lambda ctx: part.construct(ctx).fixed)  # type: ignore[attr-defined]
            inner = "dirent" if part.plus else None
            name_abbrev = self.field(f"{path}.dirent.name" if inner else f"{path}.name", "string")
            where = f', inner="{inner}"' if inner else ""
            return (f'{{k="dirents", {common}, d="{part.describe()}", f="{path}", v={v}, name_f="{name_abbrev}"'
                    f'{where}}}')
        if isinstance(part, KeyValues):
            return f'{{k="keyvalues", {common}, d="KEY=VALUE info blob", f="{self.field(path, "string")}"}}'
        if isinstance(part, Secctx):
            self.secctx_fields(path)
            return f'{{k="secctx", {common}, d="{part.describe()}", f="{path}"}}'
        raise GenerationError(f"no Lua for part kind {type(part).__name__} ({part.name!r})")

    def secctx_fields(self, path: str) -> None:
        """The fields of a security context list: the header, then (fuse_secctx, name, context) each."""
        self.field(path, "none")
        for name in STRUCTS["fuse_secctx_header"].subcons:
            self.field(f"{path}.{name.name}", "u32")
        self.field(f"{path}.contexts", "none")
        self.field(f"{path}.contexts.size", "u32")
        self.field(f"{path}.contexts.name", "string")
        self.field(f"{path}.contexts.context", "bytes")

    def parts(self, parts: Sequence[Part]) -> str:
        return "{" + ", ".join(self.part(p) for p in parts) + "}"


def _int_base(key: str) -> str:
    """How the text form shows an integer field named ``key``: "oct" (modes), "hex" (flags...), "dec".

    Asked of the renderer itself (``render._fmt_value``), so the tree and ``decode``'s text
    follow one rule.
    """
    shown = _fmt_value(key, 8, 0)
    return "hex" if shown.startswith("0x") else "oct" if shown == "010" else "dec"


def _element_layout(element: str, ctx: PartContext) -> cs.Struct:
    from ..layouts import layout
    return layout(element, ctx.minor, ctx.flags)


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for ASCII text


def generate() -> str:
    """The whole dissector: generated tables followed by the engine."""
    g = Generator()
    header_in = g.layout(STRUCTS["fuse_in_header"], "fuse")
    header_out = g.layout(STRUCTS["fuse_out_header"], "fuse")
    ops = []
    for opcode, spec in sorted(OPS.items()):
        reply = "nil" if spec.reply is None else g.parts(spec.reply)
        ops.append(f'OPS[{opcode}] = {{name="{spec.name}", req={g.parts(spec.request)}, rep={reply}}}')
    notes = []
    for code, nspec in sorted(NOTIFICATIONS.items()):
        notes.append(f'NOTIFY[{code}] = {{name="{nspec.name}", body={g.parts(nspec.body)}}}')
    g.secctx_fields("fuse.extensions.secctx")
    for name, kind in (("fuse.extensions", "none"), ("fuse.extensions.type", "u32"),
                       ("fuse.extensions.kind", "string"), ("fuse.extensions.groups", "u32"),
                       ("fuse.extensions.data", "bytes")):
        g.field(name, kind)

    out: List[str] = []
    w = out.append
    w("-- FUSE/CUSE dissector for fusd captures (pcapng, link type 147 = LINKTYPE_USER0).")
    w("-- GENERATED by `python -m fusd_wire wireshark` from fusd_wire's opcode table: do not edit.")
    w(f"-- Protocol 7.{C.FUSE_KERNEL_MINOR_VERSION}; install: copy to ~/.local/lib/wireshark/plugins/ "
      "(see docs/traces.md).")
    w("")
    w("local bit = bit  -- the Lua BitOp library every Wireshark provides")
    w(f"local MAX_MINOR = {C.FUSE_KERNEL_MINOR_VERSION}")
    w(f"local FUSE_INIT, CUSE_INIT = {int(C.fuse_opcode.FUSE_INIT)}, {int(C.fuse_opcode.CUSE_INIT)}")
    w(f"local FUSE_INIT_EXT = {int(C.InitFlags.FUSE_INIT_EXT)}")
    w(f"local FUSE_MAX_NR_SECCTX, FUSE_EXT_GROUPS = {int(C.fuse_ext_type.FUSE_MAX_NR_SECCTX)}, "
      f"{int(C.fuse_ext_type.FUSE_EXT_GROUPS)}")
    w("")
    w("local OPCODE_NAMES = {" + ", ".join(f'[{op}]="{spec.name}"' for op, spec in sorted(OPS.items())) + "}")
    w("local NOTIFY_NAMES = {" + ", ".join(f'[{c}]="{s.name}"' for c, s in sorted(NOTIFICATIONS.items())) + "}")
    errnos = ", ".join(f'[{-n}]="{name}"' for n, name in sorted(_errno.errorcode.items()))
    w('local ERRNO_NAMES = {[0]="success", ' + errnos + "}")
    w("")
    w("-- Fields: one per struct field path, as in `decode --json` bodies.")
    w("local F = {}")
    for abbrev, (kind, label, base) in sorted(g.fields.items()):
        if kind == "none":
            w(f'F["{abbrev}"] = ProtoField.none("{abbrev}", "{label}")')
        elif kind in ("string", "bytes"):
            w(f'F["{abbrev}"] = ProtoField.{kind}("{abbrev}", "{label}")')
        else:
            vs = ""
            if abbrev == "fuse.opcode":
                vs = ", OPCODE_NAMES"
            elif abbrev == "fuse.error":
                vs = ", ERRNO_NAMES"
            w(f'F["{abbrev}"] = ProtoField.{_PROTOFIELD[kind]}("{abbrev}", "{label}", {base}{vs})')
    w("")
    w("-- Struct layouts (each as one protocol minor sees it) and, per part, which applies when.")
    w("local L = {}")
    for i, lua in enumerate(g.layouts, 1):
        w(f"L[{i}] = {lua}")
    w("local V = {}")
    for name, lua in g.variants.items():
        w(f"{name} = {lua}")
    w(f"local IN_HEADER, OUT_HEADER = L[{header_in}], L[{header_out}]")
    w("")
    w("-- Part presence predicates (opcodes.py), in Lua.")
    w("local P = {}")
    for name, body in PREDICATES.items():
        w(f"P.{name} = function(ctx)\n  {body}\nend")
    w("")
    w("-- The opcode and notification tables (opcodes.py OPS / NOTIFICATIONS).")
    w("local OPS, NOTIFY = {}, {}")
    out.extend(ops)
    out.extend(notes)
    w("")
    w(engine_source())
    return "\n".join(out) + "\n"


def engine_source() -> str:
    """The hand-written Lua engine that walks the generated tables."""
    return resources.files(__package__).joinpath("wireshark_engine.lua").read_text(encoding="utf-8")


def shipped_path() -> str:
    """Where the generated dissector installed with the package is (``fusd_wire/trace/fuse.lua``)."""
    return str(resources.files(__package__).joinpath("fuse.lua"))


def run_wireshark(output: Optional[str] = None, install: bool = False) -> int:
    """``python -m fusd_wire wireshark``: print the dissector, or write it to ``output``/the plugin folder."""
    import os
    text = generate()
    if install:
        folder = os.path.join(os.path.expanduser("~"), ".local", "lib", "wireshark", "plugins")
        os.makedirs(folder, exist_ok=True)
        output = os.path.join(folder, "fuse.lua")
    if output is None:
        sys.stdout.write(text)
        return 0
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {output}", file=sys.stderr)
    return 0


__all__ = ["GenerationError", "PREDICATES", "generate", "run_wireshark", "shipped_path"]
