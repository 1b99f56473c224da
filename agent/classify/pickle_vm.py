"""A tiny symbolic pickle reader that finds tensor shapes without ever executing a pickle.

PyTorch checkpoints (`torch.save`) are zips whose `data.pkl` describes each tensor as
`torch._utils._rebuild_tensor_v2(<persistent storage id>, offset, shape, stride, ...)`.
Unpickling runs arbitrary code, so the opcodes are decoded without it (`pickle_opcodes`:
a table of opcode → argument layout, every length checked against the input; neither
`pickle` nor `pickletools` is ever loaded) and this module keeps a symbolic stack of
plain values. A GLOBAL becomes a `Global` name, a REDUCE of `_rebuild_tensor_v2` over a
storage id becomes a `TensorRecord`, and every other call becomes an opaque value. Any
global outside an allowlist of what model checkpoints legitimately reference (torch's
rebuild functions and storages, numpy's array reconstruction, OrderedDict, the builtins
that construct data...) is *named* in `unsafe_globals` so that the evidence can say so:
a denylist always misses one (`operator`, `functools`, `marshal`, `ctypes`...). Bounded:
input size, opcode count, stack and memo size, tensors, dimensions per shape, and the
caller's `Deadline`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from agent.classify.base import Deadline, ParseError
from agent.classify.pickle_opcodes import NOARG, opcodes

MAX_OPS = 2_000_000
MAX_STACK = 100_000
MAX_TENSORS = 1 << 17
MAX_DIMS = 64
CHECK_EVERY = 4096  # opcodes between deadline checks

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

# module → names a checkpoint may reference ("*": any name in that module); everything
# else is unsafe. Constructors of data only: nothing here reads or writes files, imports,
# evaluates or calls an arbitrary callable given as an argument.
_DATA_BUILTINS = frozenset(
    {"set", "frozenset", "bytearray", "bytes", "complex", "slice", "range", "int", "float"}
    | {"str", "list", "dict", "tuple", "bool", "object"}  # object: copyreg's base class
)
_SAFE_GLOBALS: dict[str, frozenset[str]] = {
    "builtins": _DATA_BUILTINS,
    "__builtin__": _DATA_BUILTINS,
    "collections": frozenset({"OrderedDict", "defaultdict", "Counter", "deque"}),
    "_codecs": frozenset({"encode"}),
    "copyreg": frozenset({"_reconstructor"}),
    "copy_reg": frozenset({"_reconstructor"}),
    "torch._tensor": frozenset({"_rebuild_from_type_v2"}),
    "torch.nn.parameter": frozenset({"Parameter", "UninitializedParameter", "Buffer"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.core.numeric": frozenset({"_frombuffer"}),
    "numpy._core.numeric": frozenset({"_frombuffer"}),
    "numpy.dtypes": frozenset({"*"}),
    "numpy.random._pickle": frozenset({"*"}),
    "joblib.numpy_pickle": frozenset({"NumpyArrayWrapper", "NDArrayWrapper"}),
    "argparse": frozenset({"Namespace"}),
    "datetime": frozenset({"datetime", "date", "time", "timedelta", "timezone"}),
    "decimal": frozenset({"Decimal"}),
    "uuid": frozenset({"UUID"}),
    # Lightning checkpoints keep hyper-parameters as paths and OmegaConf configs
    "pathlib": frozenset({"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"}),
    "typing": frozenset({"Any"}),
}
# modules whose classes (capitalised names) are data: whole saved models and estimators
_CLASS_PREFIXES = ("torch.nn.modules.", "sklearn.", "xgboost.", "lightgbm.", "omegaconf.")
_TORCH_DTYPE = re.compile(
    r"(?:u?int\d+|float\d*|bfloat16|complex\d*|c?double|half|long|short|bool|cfloat"
    r"|q?u?int\d+(?:x\d+)?|float8_\w+|strided|sparse_\w+|\w+_format|channels_last\w*)"
)


def is_safe_global(module: str, name: str) -> bool:
    """Whether a checkpoint may name `module.name` (the allowlist above)."""
    allowed = _SAFE_GLOBALS.get(module)
    if allowed is not None and (name in allowed or "*" in allowed):
        return True
    if module == "torch":
        return (
            name.endswith("Storage")
            or name in ("Size", "device", "dtype", "Tensor")
            or (_TORCH_DTYPE.fullmatch(name) is not None)
        )
    if module == "torch._utils":
        return name.startswith("_rebuild_")
    return module.startswith(_CLASS_PREFIXES) and name[:1].isupper() and name.isidentifier()


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
    return Storage(
        dtype=dtype, key=_name(key) if not isinstance(key, int) else str(key), numel=numel
    )


def _index(arg: object) -> int:
    return arg if isinstance(arg, int) else 0


def scan_pickle(
    data: bytes,
    max_ops: int = MAX_OPS,
    deadline: Deadline | None = None,
    max_tensors: int = MAX_TENSORS,
) -> PickleSummary:
    """Walk the opcodes of one pickle; never imports or calls anything it names."""
    deadline = deadline or Deadline()
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
        for name, arg in opcodes(data):
            ops += 1
            if ops > max_ops:
                out.complete = False
                break
            if ops % CHECK_EVERY == 0:
                deadline.check()
            if len(stack) > MAX_STACK or len(memo) > MAX_STACK:
                raise ParseError("pickle: stack or memo over bound")
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
                # never str() a built value: a DAG of shared tuples prints exponentially
                g = Global(_name(module_v), _name(attr_v))
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
                memo[_index(arg)] = stack[-1] if stack else _OPAQUE
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else _OPAQUE
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo.get(_index(arg), _OPAQUE))
            elif name == "BINPERSID":
                pid = pop()
                stack.append(_storage_from_pid(pid) or _OPAQUE)
            elif name in ("REDUCE", "NEWOBJ"):
                args, func = pop(), pop()
                stack.append(_reduce(out, func, args, max_tensors))
            elif name == "NEWOBJ_EX":
                pop(), pop(), pop()
                stack.append(_OPAQUE)
            elif name == "BUILD" or name == "POP":
                pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1] if stack else _OPAQUE)
            elif name == "NONE":
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif arg is not NOARG:
                stack.append(arg)
            else:
                stack.append(_OPAQUE)
    except ParseError:
        raise
    except (ValueError, struct.error, UnicodeDecodeError, IndexError) as e:
        raise ParseError(f"pickle: {type(e).__name__}: {e}") from None
    return out


def _name(v: object) -> str:
    return v[:512] if isinstance(v, str) else "?"


def _note_global(out: PickleSummary, g: Global) -> None:
    if len(out.globals) < 256:
        out.globals.add(g.qualname)
    if not is_safe_global(g.module, g.name) and len(out.unsafe_globals) < 256:
        out.unsafe_globals.add(g.qualname)


def _reduce(out: PickleSummary, func: object, args: object, max_tensors: int) -> object:
    if (
        isinstance(func, Global)
        and func.module == "torch._utils"
        and func.name.startswith("_rebuild_tensor")
        and isinstance(args, tuple)
        and len(args) >= 3
        and isinstance(args[0], Storage)
        and isinstance(args[2], tuple)
        and len(args[2]) <= MAX_DIMS  # before looking at them: a shape may be shared 1e6 times
        and all(isinstance(d, int) and 0 <= d < 1 << 40 for d in args[2])
    ):
        t = TensorRecord(storage=args[0], shape=tuple(int(d) for d in args[2]))
        if len(out.tensors) < max_tensors:
            out.tensors.append(t)
        else:
            out.complete = False
        return t
    return _OPAQUE
