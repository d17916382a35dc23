"""Reading pickled data files without running code from them.

``pickle.load`` calls whatever a file names, so a crafted data file runs its author's
command. :func:`load_plain_data` admits only what the official CIFAR-10/100 python format
holds: dicts, lists, tuples, bytes, str, numbers, booleans, None and numpy arrays (and
scalars, as ``list(labels)`` makes) of a numeric dtype (bool, integer, float, complex).
numpy's own pickling functions are never called: the array, scalar and dtype records of
numpy's pickles (``numpy[._]core.multiarray._reconstruct`` and ``.scalar``,
``numpy[._]core.numeric._frombuffer``, ``numpy.ndarray``, ``numpy.dtype``, and
``_codecs.encode(text, "latin1")`` for bytes in Python 3's protocol 2) are checked and
rebuilt here with ``np.frombuffer``. Anything else raises :class:`UnsafePickleError`
naming what the file asked for.
"""
from __future__ import annotations

import math
import pickle
from typing import Any, BinaryIO, Tuple

import numpy as np

NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex
BYTE_ORDERS = ("<", ">", "|", "=")
PLAIN_TYPES = (bytes, str, int, float, bool, type(None))


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle holds something a plain data file never does; the message names it."""


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _numeric_dtype(code: Any) -> np.dtype:
    code = _text(code)
    if not isinstance(code, str):
        raise UnsafePickleError(f"a numpy dtype given as a {type(code).__name__}, not a type code")
    try:
        dtype = np.dtype(code)
    except (TypeError, ValueError):
        raise UnsafePickleError(f"a numpy dtype of unknown code {code!r}") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.hasobject or dtype.fields or dtype.subdtype:
        raise UnsafePickleError(f"a numpy array of dtype {code!r} (only bool, integer, float and "
                                "complex arrays are admitted)")
    return dtype


class _DType:
    """Stands for a ``numpy.dtype`` record: a numeric type code and a byte order."""

    def __init__(self, code: Any = None, *_flags: Any):
        self.dtype = _numeric_dtype(code)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise UnsafePickleError("a numpy dtype with fields or sub-arrays")
        order = _text(state[1])
        if order not in BYTE_ORDERS:
            raise UnsafePickleError(f"a numpy dtype with byte order {order!r}")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


def _dtype_of(value: Any) -> np.dtype:
    if not isinstance(value, _DType):
        raise UnsafePickleError(f"a numpy array whose dtype is a {type(value).__name__}")
    return value.dtype


def _shape_of(value: Any) -> Tuple[int, ...]:
    if not isinstance(value, tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
        raise UnsafePickleError(f"a numpy array of shape {value!r}")
    return value


def _array(raw: Any, dtype: np.dtype, shape: Tuple[int, ...], fortran: bool) -> np.ndarray:
    if isinstance(raw, str):
        raw = raw.encode("latin1")
    if not isinstance(raw, (bytes, bytearray)):
        raise UnsafePickleError(f"numpy array data given as {type(raw).__name__}, not bytes")
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise UnsafePickleError(f"numpy array data of {len(raw)} bytes for shape {shape} of "
                                f"{dtype} ({math.prod(shape) * dtype.itemsize} bytes)")
    return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")


class _ArrayType:
    """Stands for the ``numpy.ndarray`` class: only ``_reconstruct`` may take it."""

    def __init__(self, *_args: Any):
        raise UnsafePickleError("a direct call of numpy.ndarray")


class _Array:
    """Stands for an array ``_reconstruct`` made; its state (``BUILD``) gives the data."""

    array = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError("a numpy array record of an unknown layout")
        shape, dtype, fortran, raw = state[-4:]
        self.array = _array(raw, _dtype_of(dtype), _shape_of(shape), bool(fortran))


def _reconstruct(subtype: Any, _shape: Any = None, _code: Any = None) -> _Array:
    if subtype is not _ArrayType:
        raise UnsafePickleError("a numpy array record of a class other than numpy.ndarray")
    return _Array()


def _frombuffer(raw: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    return _array(raw, _dtype_of(dtype), _shape_of(shape), _text(order) == "F")


def _scalar(dtype: Any, raw: Any) -> np.generic:
    return _array(raw, _dtype_of(dtype), (), False)[()]


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"a text encoding other than latin1 ({encoding!r})")
    return text.encode("latin1")


ALLOWED = {
    ("numpy", "ndarray"): _ArrayType,
    ("numpy", "dtype"): _DType,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _encode,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"a reference to {module}.{name}") from None


def _plain(value: Any) -> Any:
    """``value`` with every array record replaced by its array; raises on anything else."""
    if isinstance(value, _Array):
        if value.array is None:
            raise UnsafePickleError("a numpy array record without data")
        return value.array
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (np.ndarray, np.generic)) or type(value) in PLAIN_TYPES:
        return value
    raise UnsafePickleError(f"a {type(value).__name__} object")


def load_plain_data(file: BinaryIO, encoding: str = "bytes") -> Any:
    """Unpickle ``file`` admitting plain data and numeric numpy arrays only (module
    docstring); ``encoding`` as for :func:`pickle.load` (how Python 2 strings are read).
    Raises :class:`UnsafePickleError` for anything else, before any of it is called."""
    return _plain(_Unpickler(file, encoding=encoding).load())
