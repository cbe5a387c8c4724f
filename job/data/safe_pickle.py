"""A pickle reader that builds only what a CIFAR batch holds, never what the data asks for.

`pickle.Unpickler` calls whatever the data names, with arguments and sizes the data chooses;
even an allow-list of numpy's reconstruction helpers lets a crafted file build an object array
from chosen pointers. This reader interprets the few opcodes CIFAR pickles use (protocol 2 as
written by Python 2 or 3, protocols 3 to 5 by Python 3) over plain values only: ints (at most
8 bytes), bytes, str, None, bools, flat lists, tuples at most two deep, dicts. It recognises
exactly one construction, a C-order uint8 array of the caller's shape, in the forms numpy
writes it (`_reconstruct` + BUILD, or `_frombuffer`), and the `_codecs.encode(str, 'latin1')`
that Python 3 uses for bytes in protocol 2. Every length is checked against the bytes left
before anything is read, and stack, memo, container items and derived bytes are capped, so
memory stays proportional to the input. Anything else raises `Refused`.
"""

from __future__ import annotations

import pickle
import pickletools
import struct
from dataclasses import dataclass

import numpy as np

MAX_STACK = 16_384  # a batch pushes its 10,000 labels (or filenames) between one MARK and APPENDS
MAX_ITEMS = 65_536  # list, tuple and dict items over the whole pickle: labels + filenames + a few
MAX_MEMO = 65_536
MAX_MARKS = 16  # a batch nests four deep (dict, list or array state, dtype state)
MAX_GLOBAL_NAME = 64


class Refused(ValueError):
    """The pickle is not one this reader accepts; the message says why in one line."""


@dataclass(frozen=True)
class _Global:
    """A callable named by GLOBAL/STACK_GLOBAL; only `REDUCE` gives it meaning."""

    name: str


class _Uint8Dtype:
    """numpy.dtype('u1') as pickled; its BUILD state is checked, nothing else is kept."""

    def __repr__(self) -> str:
        return "dtype('u1')"


class _EmptyArray:
    """`_reconstruct(ndarray, (0,), b'b')`: an array that its BUILD state must fill."""

    def __repr__(self) -> str:
        return "ndarray(<no state yet>)"


_U1 = _Uint8Dtype()
_RECONSTRUCT = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"}
_FROMBUFFER = {"numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer"}
_ALLOWED_GLOBALS = _RECONSTRUCT | _FROMBUFFER | {"numpy.ndarray", "numpy.dtype", "_codecs.encode"}
_DTYPE_STATE = (3, "|", None, None, None, -1, -1, 0)
_SCALARS = (int, bytes, str, bool, type(None))
_MARK = object()


def _excerpt(value: object, limit: int = 80) -> str:
    """A short repr that never formats more than `limit` characters of the data."""
    if isinstance(value, tuple):
        text = "(" + ", ".join(_excerpt(v, 30) for v in value[:6]) + (", ...)" if len(value) > 6 else ")")
    elif isinstance(value, (list, dict, np.ndarray)):
        text = f"<{type(value).__name__} of {len(value)}>"
    else:
        text = repr(value[:limit] if isinstance(value, (bytes, str)) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Reader:
    def __init__(self, blob: bytes | bytearray | memoryview, array_shape: tuple[int, ...] | None):
        self.data = memoryview(blob).cast("B")
        self.pos = 0
        self.array_shape = array_shape
        self.stack: list[object] = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}
        self.items = 0
        self.derived = 0  # bytes made by _codecs.encode: each input string may be encoded once
        self.arrays = 0

    # --- input ---------------------------------------------------------------------------

    def take(self, n: int) -> memoryview:
        if n < 0 or n > len(self.data) - self.pos:
            raise Refused(f"truncated: {n} bytes wanted at byte {self.pos}, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def text(self, n: int) -> str:
        try:
            return str(self.take(n), "utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise Refused(f"string at byte {self.pos - n} is not UTF-8") from None

    def line(self) -> str:
        start = self.pos
        end = bytes(self.data[start : start + MAX_GLOBAL_NAME + 1]).find(b"\n")
        if end < 0:
            raise Refused(f"global name at byte {start} is unterminated or longer than {MAX_GLOBAL_NAME}")
        raw = bytes(self.take(end + 1)[:-1])
        if not raw.isascii():
            raise Refused(f"global name at byte {start} is not ASCII")
        return raw.decode()

    # --- stack -----------------------------------------------------------------------------

    def push(self, value: object) -> None:
        if len(self.stack) >= MAX_STACK:
            raise Refused(f"more than {MAX_STACK} values on the stack")
        self.stack.append(value)

    def pop(self, n: int = 1) -> list[object]:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) - n < floor:
            raise Refused(f"stack underflow at byte {self.pos - 1}")
        values = self.stack[len(self.stack) - n :]
        del self.stack[len(self.stack) - n :]
        return values

    def pop_mark(self) -> list[object]:
        if not self.marks:
            raise Refused(f"no MARK before byte {self.pos - 1}")
        floor = self.marks.pop()
        values = self.stack[floor:]
        del self.stack[floor:]
        return values

    def top(self) -> object:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) <= floor:
            raise Refused(f"stack underflow at byte {self.pos - 1}")
        return self.stack[-1]

    def count(self, n: int) -> None:
        self.items += n
        if self.items > MAX_ITEMS:
            raise Refused(f"more than {MAX_ITEMS} container items")

    # --- values ----------------------------------------------------------------------------

    def tuple_of(self, values: list[object]) -> tuple[object, ...]:
        for v in values:
            inner = isinstance(v, tuple)
            if not (isinstance(v, (*_SCALARS, _Global, _Uint8Dtype)) or (inner and all(isinstance(i, _SCALARS) for i in v))):
                raise Refused(f"a tuple may not hold {type(v).__name__} at byte {self.pos - 1}")
        self.count(len(values))
        return tuple(values)

    def extend_list(self, values: list[object]) -> None:
        target = self.top()
        if not isinstance(target, list):
            raise Refused(f"APPEND(S) to {type(target).__name__} at byte {self.pos - 1}")
        if not all(isinstance(v, _SCALARS) for v in values):
            raise Refused(f"a list may hold only ints, strings and bytes (byte {self.pos - 1})")
        self.count(len(values))
        target.extend(values)

    def set_items(self, values: list[object]) -> None:
        target = self.top()
        if not isinstance(target, dict) or len(values) % 2:
            raise Refused(f"SETITEM(S) on {type(target).__name__} at byte {self.pos - 1}")
        for key, value in zip(values[::2], values[1::2]):
            if not isinstance(key, (bytes, str)):
                raise Refused(f"dict key {_excerpt(key)} is not a string")
            if not isinstance(value, (*_SCALARS, list, np.ndarray)):
                raise Refused(f"dict value for {_excerpt(key)} is a {type(value).__name__}")
            if key in target:
                raise Refused(f"dict key {_excerpt(key)} appears twice")
            target[key] = value
        self.count(len(values) // 2)

    # --- the constructions numpy and Python write for a uint8 array -------------------------

    def reduce(self, func: object, args: object) -> object:
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise Refused(f"REDUCE on {type(func).__name__} at byte {self.pos - 1}")
        if func.name == "_codecs.encode" and len(args) == 2 and isinstance(args[0], str) and args[1] == "latin1":
            return self.latin1(args[0])
        if func.name == "numpy.dtype" and len(args) == 3 and args[0] in ("u1", b"u1") and args[1:] == (0, 1):
            return _U1
        if func.name in _RECONSTRUCT and len(args) == 3 and args[:2] == (_Global("numpy.ndarray"), (0,)) and args[2] in ("b", b"b"):
            return _EmptyArray()
        if func.name in _FROMBUFFER and len(args) == 4 and args[1] is _U1 and args[3] in ("C", b"C"):
            return self.array(args[2], args[0])
        raise Refused(f"call {func.name}{_excerpt(args)} is not a uint8 array construction")

    def latin1(self, text: str) -> bytes:
        self.derived += len(text)
        if self.derived > len(self.data):
            raise Refused("encoded strings exceed the pickle's size")
        try:
            return text.encode("latin1")
        except UnicodeEncodeError:
            raise Refused("string for _codecs.encode is not latin-1") from None

    def build(self, target: object, state: object) -> object:
        if not isinstance(state, tuple):
            raise Refused(f"BUILD state is a {type(state).__name__} at byte {self.pos - 1}")
        if target is _U1 and state in (_DTYPE_STATE, (3, b"|", *_DTYPE_STATE[2:])):
            return _U1
        if isinstance(target, _EmptyArray) and len(state) == 5:
            version, shape, dtype, fortran, raw = state
            if version == 1 and dtype is _U1 and fortran == 0:
                return self.array(shape, raw)
        raise Refused(f"BUILD of {_excerpt(target, 30)} with state {_excerpt(state, 60)} is not a uint8 C-order array")

    def array(self, shape: object, raw: object) -> np.ndarray:
        if self.array_shape is None:
            raise Refused("an array where none belongs")
        if shape != self.array_shape:
            raise Refused(f"array shape {_excerpt(shape)} is not {self.array_shape}")
        if not isinstance(raw, bytes) or len(raw) != int(np.prod(self.array_shape)):
            raise Refused(f"array holds {len(raw) if isinstance(raw, bytes) else type(raw).__name__} bytes, not {int(np.prod(self.array_shape))}")
        self.arrays += 1
        if self.arrays > 1:
            raise Refused("more than one array")
        return np.frombuffer(raw, dtype=np.uint8).reshape(self.array_shape)

    # --- the interpreter --------------------------------------------------------------------

    def run(self) -> dict[object, object]:
        while True:
            at = self.pos
            code = self.uint(1)
            op = _OPS.get(code)
            if op is None:
                name = getattr(pickletools.code2op.get(chr(code)), "name", f"0x{code:02x}")
                raise Refused(f"opcode {name} at byte {at} is not part of the CIFAR batch format")
            if op(self) is _STOP:
                break
        if self.pos != len(self.data):
            raise Refused(f"{len(self.data) - self.pos} bytes after STOP")
        if self.marks or len(self.stack) != 1 or not isinstance(self.stack[0], dict):
            raise Refused("the pickle does not hold exactly one dict")
        return self.stack[0]


_STOP = object()


def _memo_put(r: _Reader, index: int) -> None:
    if len(r.memo) >= MAX_MEMO and index not in r.memo:
        raise Refused(f"more than {MAX_MEMO} memo entries")
    r.memo[index] = r.top()


def _memo_get(r: _Reader, index: int) -> None:
    if index not in r.memo:
        raise Refused(f"memo entry {index} used before it is set")
    r.push(r.memo[index])


def _proto(r: _Reader) -> None:
    if r.uint(1) > 5:
        raise Refused("pickle protocol above 5")


def _frame(r: _Reader) -> None:
    size = r.uint(8)
    if size > len(r.data) - r.pos:
        raise Refused(f"frame of {size} bytes runs past the end")


def _mark(r: _Reader) -> None:
    if len(r.marks) >= MAX_MARKS:
        raise Refused(f"more than {MAX_MARKS} nested MARKs")
    r.marks.append(len(r.stack))


def _long1(r: _Reader) -> None:
    size = r.uint(1)
    if size > 8:
        raise Refused(f"integer of {size} bytes (at most 8 allowed)")
    r.push(int.from_bytes(r.take(size), "little", signed=True))


def _tuple(n: int):
    return lambda r: r.push(r.tuple_of(r.pop(n)))


def _global(r: _Reader) -> None:
    _push_global(r, f"{r.line()}.{r.line()}")


def _stack_global(r: _Reader) -> None:
    module, name = r.pop(2)
    if not isinstance(module, str) or not isinstance(name, str):
        raise Refused("STACK_GLOBAL needs two strings")
    _push_global(r, f"{module}.{name}")


def _push_global(r: _Reader, name: str) -> None:
    if name not in _ALLOWED_GLOBALS:
        raise Refused(f"global {_excerpt(name)} is not allowed")
    r.push(_Global(name))


def _reduce(r: _Reader) -> None:
    func, args = r.pop(2)
    r.push(r.reduce(func, args))


def _build(r: _Reader) -> None:
    target, state = r.pop(2)
    r.push(r.build(target, state))


def _binstring(r: _Reader) -> None:
    size = struct.unpack("<i", r.take(4))[0]
    r.push(bytes(r.take(size)))


_OPS = {
    pickle.PROTO[0]: _proto,
    pickle.FRAME[0]: _frame,
    pickle.STOP[0]: lambda r: _STOP,
    pickle.MARK[0]: _mark,
    pickle.EMPTY_DICT[0]: lambda r: r.push({}),
    pickle.EMPTY_LIST[0]: lambda r: r.push([]),
    pickle.EMPTY_TUPLE[0]: lambda r: r.push(()),
    pickle.TUPLE[0]: lambda r: r.push(r.tuple_of(r.pop_mark())),
    pickle.TUPLE1[0]: _tuple(1),
    pickle.TUPLE2[0]: _tuple(2),
    pickle.TUPLE3[0]: _tuple(3),
    pickle.APPEND[0]: lambda r: r.extend_list(r.pop(1)),
    pickle.APPENDS[0]: lambda r: r.extend_list(r.pop_mark()),
    pickle.SETITEM[0]: lambda r: r.set_items(r.pop(2)),
    pickle.SETITEMS[0]: lambda r: r.set_items(r.pop_mark()),
    pickle.BININT[0]: lambda r: r.push(struct.unpack("<i", r.take(4))[0]),
    pickle.BININT1[0]: lambda r: r.push(r.uint(1)),
    pickle.BININT2[0]: lambda r: r.push(r.uint(2)),
    pickle.LONG1[0]: _long1,
    pickle.NONE[0]: lambda r: r.push(None),
    pickle.NEWTRUE[0]: lambda r: r.push(True),
    pickle.NEWFALSE[0]: lambda r: r.push(False),
    pickle.SHORT_BINSTRING[0]: lambda r: r.push(bytes(r.take(r.uint(1)))),
    pickle.BINSTRING[0]: _binstring,
    pickle.SHORT_BINBYTES[0]: lambda r: r.push(bytes(r.take(r.uint(1)))),
    pickle.BINBYTES[0]: lambda r: r.push(bytes(r.take(r.uint(4)))),
    pickle.BINBYTES8[0]: lambda r: r.push(bytes(r.take(r.uint(8)))),
    pickle.BYTEARRAY8[0]: lambda r: r.push(bytes(r.take(r.uint(8)))),
    pickle.SHORT_BINUNICODE[0]: lambda r: r.push(r.text(r.uint(1))),
    pickle.BINUNICODE[0]: lambda r: r.push(r.text(r.uint(4))),
    pickle.BINUNICODE8[0]: lambda r: r.push(r.text(r.uint(8))),
    pickle.GLOBAL[0]: _global,
    pickle.STACK_GLOBAL[0]: _stack_global,
    pickle.REDUCE[0]: _reduce,
    pickle.BUILD[0]: _build,
    pickle.BINPUT[0]: lambda r: _memo_put(r, r.uint(1)),
    pickle.LONG_BINPUT[0]: lambda r: _memo_put(r, r.uint(4)),
    pickle.MEMOIZE[0]: lambda r: _memo_put(r, len(r.memo)),
    pickle.BINGET[0]: lambda r: _memo_get(r, r.uint(1)),
    pickle.LONG_BINGET[0]: lambda r: _memo_get(r, r.uint(4)),
}


def load_dict(blob: bytes | bytearray | memoryview, array_shape: tuple[int, ...] | None = None) -> dict[object, object]:
    """The dict pickled in `blob`; at most one value may be a uint8 array of `array_shape`."""
    return _Reader(blob, array_shape).run()
