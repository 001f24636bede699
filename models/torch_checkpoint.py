"""Read the tensors of a PyTorch checkpoint (``.pt``) into numpy arrays, without torch.

Small speaker-embedding models ship as torch state dicts, but torch is a 3 GB
dependency for what is a 17 MB matrix file. Both of torch's on-disk formats
(the legacy stream of pickles and the zip archive used since torch 1.6) are
read here with a restricted unpickler: only the handful of names a state dict
refers to can be built, so a checkpoint cannot run code the way
``torch.load`` without ``weights_only`` could.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class CheckpointError(ValueError):
    """The file is not a torch checkpoint this reader understands."""


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = np.dtype(_DTYPES[name])


class _Storage:
    """A lazily filled flat buffer, shared by the tensors that view it."""

    def __init__(self, dtype: np.dtype[Any], key: str) -> None:
        self.dtype = dtype
        self.key = key
        self.data: np.ndarray | None = None


class _Tensor:
    def __init__(
        self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise CheckpointError(f"storage {self.storage.key} has no data")
        item = data.itemsize
        if not self.size:
            return np.array(data[self.offset])
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride)
        )
        return np.array(view)  # a copy: the checkpoint's buffers can be dropped


def _rebuild_tensor(storage: _Storage, offset: int, size: Any, stride: Any, *_: Any) -> _Tensor:
    return _Tensor(storage, int(offset), tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    _ALLOWED = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    }

    def __init__(self, file: Any, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"checkpoint refers to {module}.{name}, which a state dict never needs"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if key not in self.storages:
            dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.dtype(np.float32)
            self.storages[key] = _Storage(dtype, key)
        return self.storages[key]


def _to_arrays(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.array()
    if isinstance(obj, dict):
        return {k: _to_arrays(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_arrays(v) for v in obj)
    return obj


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise CheckpointError(f"{path}: zip without data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
        for key, storage in storages.items():
            raw = archive.read(f"{prefix}data/{key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
    return obj


def _load_legacy(path: Path) -> Any:
    with open(path, "rb") as fh:
        storages: dict[str, _Storage] = {}
        if pickle.load(fh) != _LEGACY_MAGIC:  # a bare int, safe to read with the stock unpickler
            raise CheckpointError(f"{path}: not a torch checkpoint (bad magic number)")
        pickle.load(fh)  # protocol version
        pickle.load(fh)  # sys info: endianness, type sizes
        obj = _Unpickler(fh, storages).load()
        keys = pickle.load(fh)
        for key in keys:
            storage = storages[str(key)]
            (count,) = struct.unpack("<q", fh.read(8))
            raw = fh.read(count * storage.dtype.itemsize)
            if len(raw) != count * storage.dtype.itemsize:
                raise CheckpointError(f"{path}: truncated storage {key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
    return obj


def load_checkpoint(path: str | Path) -> Any:
    """The checkpoint's object tree with every tensor as a numpy array."""
    path = Path(path)
    try:
        obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{path}: unreadable torch checkpoint: {exc}") from exc
    return _to_arrays(obj)
