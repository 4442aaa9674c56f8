"""Read PyTorch ``.pth`` / ``.bin`` checkpoints into NumPy arrays without importing torch.

A checkpoint written by ``torch.save`` (PyTorch >= 1.6, the zip format) is a zip archive::

    <archive>/data.pkl      pickled object graph; tensors refer to storages by key
    <archive>/data/<key>    raw bytes of each storage (little-endian unless <archive>/byteorder says otherwise)
    <archive>/byteorder, <archive>/version, ...

The pickle is read with a restricted unpickler: only the few globals that a tensor state dict needs
(tensor/parameter rebuild functions, storage types, dtypes, ``collections.OrderedDict``) are resolved, so
loading never executes code from the file. Any other global raises ``UnsupportedPickleGlobal`` naming it,
unless ``unknown_globals="stub"`` is passed, in which case it becomes an inert ``PickleStub`` record
(useful for checkpoints that also pickle e.g. an ``argparse.Namespace`` of training arguments).

The legacy (pre-1.6, non-zip) format is not supported and gives a clear error.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any, Dict, Iterable, Mapping

import numpy as np

from src.errors import CheckpointError

__all__ = ["load_pth", "flatten_state_dict", "CheckpointFormatError", "UnsupportedPickleGlobal", "PickleStub"]

# torch storage class name -> numpy dtype of its elements ("bfloat16" is decoded separately).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("float32"),
    "DoubleStorage": np.dtype("float64"),
    "HalfStorage": np.dtype("float16"),
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.dtype("int64"),
    "IntStorage": np.dtype("int32"),
    "ShortStorage": np.dtype("int16"),
    "CharStorage": np.dtype("int8"),
    "ByteStorage": np.dtype("uint8"),
    "BoolStorage": np.dtype("bool"),
    "ComplexFloatStorage": np.dtype("complex64"),
    "ComplexDoubleStorage": np.dtype("complex128"),
    "UntypedStorage": np.dtype("uint8"),
}

# torch dtype attribute name -> numpy dtype (dtypes can appear in pickles, e.g. as tensor metadata).
_TORCH_DTYPES = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64", "long": "int64",
    "int32": "int32", "int": "int32", "int16": "int16", "short": "int16", "int8": "int8", "uint8": "uint8",
    "bool": "bool", "complex64": "complex64", "complex128": "complex128",
}


class CheckpointFormatError(CheckpointError, ValueError):
    """The file is not a readable zip-format PyTorch checkpoint (legacy format, truncated, corrupted)."""


class UnsupportedPickleGlobal(CheckpointError, pickle.UnpicklingError):
    """The checkpoint's pickle references a global that the restricted unpickler refuses to resolve."""


class PickleStub:
    """Inert stand-in for a refused global when ``unknown_globals="stub"``: records its name and arguments."""

    def __init__(self, qualname: str, *args, **kwargs):
        self.qualname = qualname
        self.args = args
        self.kwargs = kwargs
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"PickleStub({self.qualname})"


def _stub_factory(qualname: str):
    """A fresh ``PickleStub`` subclass standing for the refused global ``qualname``."""

    class _Stub(PickleStub):
        def __init__(self, *args, **kwargs):
            super().__init__(qualname, *args, **kwargs)

    _Stub.qualname = qualname  # also set when pickle creates it via __new__ without __init__
    _Stub.__name__ = "PickleStub[" + qualname + "]"
    return _Stub


class _TorchDType:
    """A torch dtype seen in the pickle; kept as its NumPy name."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"torch.{self.name}"


class _StorageType:
    """A torch storage class reference (e.g. ``torch.FloatStorage``) from the pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _LazyStorage:
    """One storage record of the archive, decoded on first use and cached (views share storages)."""

    def __init__(self, archive: "_Archive", key: str, dtype, numel: int):
        self.archive = archive
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self._array = None

    def array(self) -> np.ndarray:
        if self._array is None:
            raw = self.archive.read_storage(self.key)
            is_bf16 = isinstance(self.dtype, str)  # "bfloat16": NumPy has no such dtype
            itemsize = 2 if is_bf16 else self.dtype.itemsize
            if len(raw) < self.numel * itemsize:
                raise CheckpointFormatError(
                    f"{self.archive.path}: storage {self.key!r} holds {len(raw)} bytes, "
                    f"expected {self.numel * itemsize} (truncated or corrupted file)")
            raw = raw[: self.numel * itemsize]
            if is_bf16:
                bits = np.frombuffer(raw, dtype=self.archive.endian + "u2").astype(np.uint32)
                arr = (bits << 16).view(np.float32)  # bf16 is the top half of a float32
            else:
                arr = np.frombuffer(raw, dtype=self.dtype.newbyteorder(self.archive.endian))
                if not arr.dtype.isnative:
                    arr = arr.astype(self.dtype.newbyteorder("="))
            self._array = arr
        return self._array


def _rebuild_tensor(storage: _LazyStorage, storage_offset: int, size, stride, *unused) -> np.ndarray:
    """Materialise ``storage[offset:]`` viewed with ``size``/``stride`` (in elements) as a new array."""
    flat = storage.array()
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    if any(s == 0 for s in size):
        return np.empty(size, dtype=flat.dtype)
    last = int(storage_offset) + sum((n - 1) * st for n, st in zip(size, stride))
    if storage_offset < 0 or last >= flat.size or any(st < 0 for st in stride):
        raise CheckpointFormatError(
            f"{storage.archive.path}: tensor view (offset {storage_offset}, size {size}, stride {stride}) "
            f"exceeds its storage {storage.key!r} of {flat.size} elements")
    base = flat[int(storage_offset):]
    view = np.lib.stride_tricks.as_strided(
        base, shape=size, strides=tuple(st * flat.itemsize for st in stride), writeable=False)
    return np.array(view, copy=True)  # own, contiguous, writable memory


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, *state):
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


class _Archive:
    """An open zip checkpoint: locates the record prefix and reads storages."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile as err:
            raise CheckpointFormatError(
                f"{path}: not a zip-format PyTorch checkpoint ({err}); the file is truncated/corrupted or uses "
                f"the legacy pre-1.6 torch.save format, which this reader does not support") from err
        except OSError as err:
            raise CheckpointFormatError(f"{path}: cannot open checkpoint ({err})") from err
        names = self.zip.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(
                f"{path}: expected one '<name>/data.pkl' record in the zip, found {pickles or 'none'}")
        self.prefix = pickles[0][: -len("data.pkl")]
        order = self._read_optional("byteorder")
        if order is not None and order.strip() not in (b"little", b"big"):
            raise CheckpointFormatError(f"{path}: unknown byteorder record {order!r}")
        self.endian = ">" if order is not None and order.strip() == b"big" else "<"

    def _read_optional(self, name: str):
        try:
            return self.zip.read(self.prefix + name)
        except KeyError:
            return None

    def read_pickle(self) -> bytes:
        return self._read(self.prefix + "data.pkl")

    def read_storage(self, key: str) -> bytes:
        return self._read(self.prefix + "data/" + key)

    def _read(self, name: str) -> bytes:
        try:
            return self.zip.read(name)
        except KeyError as err:
            raise CheckpointFormatError(f"{self.path}: record {name!r} is missing from the archive") from err
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
            raise CheckpointFormatError(f"{self.path}: cannot read record {name!r} ({err}); "
                                        f"the file is truncated or corrupted") from err


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only tensor-state-dict globals and maps storages to lazy NumPy buffers."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, data: bytes, archive: _Archive, unknown_globals: str):
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.unknown_globals = unknown_globals
        self.storages: Dict[str, _LazyStorage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in _TORCH_DTYPES:
            return _TorchDType(_TORCH_DTYPES[name])
        if self.unknown_globals == "stub":
            return _stub_factory(f"{module}.{name}")
        raise UnsupportedPickleGlobal(
            f"{self.archive.path}: refusing to load global '{module}.{name}' from the checkpoint pickle; only "
            f"tensor state-dict globals are allowed (pass unknown_globals='stub' to load it as an inert stub)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointFormatError(f"{self.archive.path}: unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"{self.archive.path}: unknown storage type {storage_type!r}")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _LazyStorage(self.archive, key, storage_type.dtype, int(numel))
        return self.storages[key]


def load_pth(path: str | os.PathLike, unknown_globals: str = "error") -> Any:
    """Load a zip-format PyTorch checkpoint with every tensor replaced by a NumPy array.

    Args:
        path: ``.pth`` / ``.pt`` / ``.bin`` file written by ``torch.save``.
        unknown_globals: ``"error"`` (default) refuses any pickle global that a tensor state dict does
            not need; ``"stub"`` replaces it by an inert ``PickleStub`` instead (no code is executed).

    Returns:
        The top-level pickled object (usually a dict, possibly nested such as ``{"model": state_dict}``)
        with tensors as arrays: float32/float64/float16/int*/uint8/bool keep their dtype, bfloat16
        becomes float32 (exactly). Use ``flatten_state_dict`` to get the flat name -> array mapping.

    Raises:
        CheckpointFormatError: not a zip checkpoint, truncated or corrupted (message names the file).
        UnsupportedPickleGlobal: the pickle needs a global outside the allowed set.
    """
    if unknown_globals not in ("error", "stub"):
        raise ValueError(f"unknown_globals must be 'error' or 'stub', got {unknown_globals!r}")
    path = os.fspath(path)
    archive = _Archive(path)
    try:
        unpickler = _RestrictedUnpickler(archive.read_pickle(), archive, unknown_globals)
        try:
            return unpickler.load()
        except (UnsupportedPickleGlobal, CheckpointFormatError):
            raise
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, IndexError) as err:
            raise CheckpointFormatError(f"{path}: cannot unpickle data.pkl ({err})") from err
    finally:
        archive.zip.close()


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def flatten_state_dict(obj: Any, prefer_keys: Iterable[str] = ("model", "state_dict"),
                       source: str = "checkpoint") -> Dict[str, np.ndarray]:
    """Find the parameter mapping inside a loaded checkpoint and return it as a flat ``name -> array`` dict.

    Looks at ``obj`` itself, then at ``obj[k]`` for each of ``prefer_keys`` in order (the official Swin
    release keeps its weights under ``"model"``; many trainers use ``"state_dict"``). If none of those
    holds tensors, nested mappings are flattened with dotted names, keeping only array leaves. `source` (the
    file) names it in the CheckpointFormatError raised when no tensors are found.
    """
    if _is_state_dict(obj):
        return dict(obj)
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{source}: top level is a {type(obj).__name__}, not a mapping of tensors")
    for key in prefer_keys:
        if key in obj and isinstance(obj[key], Mapping):
            inner = obj[key]
            if _is_state_dict(inner):
                return dict(inner)
            flat = _flatten(inner, "")
            if flat:
                return flat
    flat = _flatten(obj, "")
    if not flat:
        raise CheckpointFormatError(f"{source}: no tensors found in the checkpoint")
    return flat


def _flatten(obj: Mapping, prefix: str) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, np.ndarray):
            out[name] = value
        elif isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
    return out
