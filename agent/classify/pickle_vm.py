"""A tiny symbolic pickle reader that finds tensor shapes without ever executing a pickle.

PyTorch checkpoints (`torch.save`) are zips whose `data.pkl` describes each tensor as
`torch._utils._rebuild_tensor_v2(<persistent storage id>, offset, shape, stride, ...)`.
Unpickling runs arbitrary code, so this module walks the opcodes with
`pickletools.genops` (a disassembler: it decodes arguments, it never imports or calls
anything) and keeps a symbolic stack of plain values. A GLOBAL becomes a `Global`
name, a REDUCE of `_rebuild_tensor_v2` over a storage id becomes a `TensorRecord`, and
every other call becomes an opaque value. Dangerous globals (os.system, builtins.eval,
...) are only *named* in the result so that the evidence can say so. Bounded: input
size, opcode count, stack and memo size.
"""

from __future__ import annotations

import io
import pickletools
from dataclasses import dataclass, field

from agent.classify.base import ParseError

MAX_OPS = 2_000_000
MAX_STACK = 100_000

# torch storage class name → (dtype, bytes per element)
STORAGE_DTYPES: dict[str, tuple[str, int]] = {
    "FloatStorage": ("f32", 4),
    "DoubleStorage": ("f64", 8),
    "HalfStorage": ("f16", 2),
    "BFloat16Storage": ("bf16", 2),
    "LongStorage": ("i64", 8),
    "IntStorage": ("i32", 4),
    "ShortStorage": ("i16", 2),
    "CharStorage": ("i8", 1),
    "ByteStorage": ("u8", 1),
    "BoolStorage": ("bool", 1),
    "ComplexFloatStorage": ("c64", 8),
    "ComplexDoubleStorage": ("c128", 16),
    "Float8_e4m3fnStorage": ("f8_e4m3", 1),
    "Float8_e5m2Storage": ("f8_e5m2", 1),
}

_SAFE_MODULES = ("torch", "collections", "numpy", "builtins.set", "_codecs")
_UNSAFE = {
    "os",
    "posix",
    "nt",
    "subprocess",
    "builtins",
    "__builtin__",
    "sys",
    "shutil",
    "socket",
    "runpy",
    "importlib",
    "webbrowser",
    "pty",
    "commands",
}


@dataclass(frozen=True, slots=True)
class Global:
    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True, slots=True)
class Storage:
    dtype: str
    key: str
    numel: int


@dataclass(frozen=True, slots=True)
class TensorRecord:
    storage: Storage
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Opaque:
    """Any value this reader does not model (dicts, lists, objects)."""


_OPAQUE = _Opaque()
_MARK = object()


@dataclass(slots=True)
class PickleSummary:
    tensors: list[TensorRecord] = field(default_factory=list)
    globals: set[str] = field(default_factory=set)
    unsafe_globals: set[str] = field(default_factory=set)
    complete: bool = True

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def dtypes(self) -> list[str]:
        return sorted({t.storage.dtype for t in self.tensors})


def _storage_from_pid(pid: object) -> Storage | None:
    # ('storage', Global('torch', 'FloatStorage'), key, location, numel)
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        return None
    cls, key, numel = pid[1], pid[2], pid[4]
    dtype = "unknown"
    if isinstance(cls, Global):
        dtype = STORAGE_DTYPES.get(cls.name, (cls.name, 0))[0]
    if not isinstance(numel, int):
        numel = 0
    return Storage(dtype=dtype, key=str(key), numel=numel)


def scan_pickle(data: bytes, max_ops: int = MAX_OPS) -> PickleSummary:
    """Walk the opcodes of one pickle; never imports or calls anything it names."""
    out = PickleSummary()
    stack: list[object] = []
    memo: dict[int, object] = {}
    ops = 0

    def pop_mark() -> list[object]:
        items: list[object] = []
        while stack:
            v = stack.pop()
            if v is _MARK:
                items.reverse()
                return items
            items.append(v)
        raise ParseError("pickle: MARK missing")

    def pop() -> object:
        if not stack:
            raise ParseError("pickle: stack underflow")
        return stack.pop()

    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            ops += 1
            if ops > max_ops:
                out.complete = False
                break
            if len(stack) > MAX_STACK or len(memo) > MAX_STACK:
                raise ParseError("pickle: stack or memo over bound")
            name = op.name
            if name in ("PROTO", "FRAME", "STOP", "PERSID"):
                if name == "STOP":
                    break
                continue
            if name == "MARK":
                stack.append(_MARK)
            elif name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                g = Global(module, attr)
                _note_global(out, g)
                if name == "INST":
                    pop_mark()
                    stack.append(_OPAQUE)
                else:
                    stack.append(g)
            elif name == "STACK_GLOBAL":
                attr_v, module_v = pop(), pop()
                g = Global(str(module_v), str(attr_v))
                _note_global(out, g)
                stack.append(g)
            elif name in ("EMPTY_TUPLE",):
                stack.append(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = [pop() for _ in range(n)]
                stack.append(tuple(reversed(items)))
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
                stack.append(_OPAQUE)
            elif name in ("LIST", "DICT", "FROZENSET", "OBJ"):
                pop_mark()
                stack.append(_OPAQUE)
            elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                pop_mark()
            elif name == "APPEND":
                pop()
            elif name == "SETITEM":
                pop(), pop()
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg or 0)] = stack[-1] if stack else _OPAQUE
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else _OPAQUE
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo.get(int(arg or 0), _OPAQUE))
            elif name == "BINPERSID":
                pid = pop()
                stack.append(_storage_from_pid(pid) or _OPAQUE)
            elif name in ("REDUCE", "NEWOBJ"):
                args, func = pop(), pop()
                stack.append(_reduce(out, func, args))
            elif name == "NEWOBJ_EX":
                pop(), pop(), pop()
                stack.append(_OPAQUE)
            elif name == "BUILD" or name == "POP":
                pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1] if stack else _OPAQUE)
            elif name in ("NONE", "NEWTRUE", "NEWFALSE") or op.arg is not None:
                stack.append(arg if name not in ("NONE",) else None)
            else:
                stack.append(_OPAQUE)
    except ParseError:
        raise
    except Exception as e:  # genops raises ValueError and friends on malformed input
        raise ParseError(f"pickle: {type(e).__name__}: {e}") from None
    return out


def _note_global(out: PickleSummary, g: Global) -> None:
    if len(out.globals) < 256:
        out.globals.add(g.qualname)
    root = g.module.split(".", 1)[0]
    if root in _UNSAFE and g.qualname not in ("builtins.set", "builtins.frozenset"):
        out.unsafe_globals.add(g.qualname)


def _reduce(out: PickleSummary, func: object, args: object) -> object:
    if (
        isinstance(func, Global)
        and func.module == "torch._utils"
        and func.name.startswith("_rebuild_tensor")
        and isinstance(args, tuple)
        and len(args) >= 3
        and isinstance(args[0], Storage)
        and isinstance(args[2], tuple)
        and all(isinstance(d, int) and 0 <= d < 1 << 40 for d in args[2])
    ):
        t = TensorRecord(storage=args[0], shape=tuple(int(d) for d in args[2]))
        if len(out.tensors) < 1_000_000:
            out.tensors.append(t)
        return t
    return _OPAQUE
