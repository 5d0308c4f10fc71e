"""Minimal ctypes binding of the HDF-EOS2 swath *writer* API (Debian `libhdfeos0`).

Real CloudSat granules are HDF-EOS2 swaths: 1-D fields are Vdata, 2-D fields SDS with dims
`nray:<swath>`, plus `StructMetadata.0`. Writing through the library itself gives exactly that layout,
so HDF-EOS clients (ccplot, GDAL, MATLAB hdfread) open our synthetic files as they open real ones.
Reading never needs this library (pyhdf reads the objects by name).
"""
from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

DFACC_CREATE = 4
HDFE_NOMERGE = 0
DFNT = {np.dtype("S1"): 4, np.dtype(np.float32): 5, np.dtype(np.float64): 6, np.dtype(np.int8): 20,
        np.dtype(np.uint8): 21, np.dtype(np.int16): 22, np.dtype(np.uint16): 23, np.dtype(np.int32): 24}
DFNT_CHAR8 = 4

_lib = None


def library():
    """Load libhdfeos (raises OSError with an install hint when missing)."""
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("hdfeos") or "libhdfeos.so.0"
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:  # pragma: no cover - depends on the machine
            raise OSError(f"HDF-EOS2 library not found ({e}); install Debian libhdfeos-dev libgctp-dev "
                          "(make setup does)") from e
        for f in ("SWopen", "SWcreate", "SWdefdim", "SWdefgeofield", "SWdefdatafield", "SWwritefield",
                  "SWdetach", "SWclose", "SWwriteattr", "SWsetfillvalue"):
            getattr(lib, f).restype = ctypes.c_int32
        _lib = lib
    return _lib


def _b(s: str) -> bytes:
    return s.encode("ascii")


class SwathWriter:
    """Write one HDF-EOS2 swath. Use as a context manager."""

    def __init__(self, path, swath_name: str):
        self.lib = library()
        self.path = str(path)
        self.fid = self.lib.SWopen(_b(self.path), DFACC_CREATE)
        if self.fid <= 0:
            raise OSError(f"{self.path}: SWopen failed ({self.fid})")
        self.sw = self.lib.SWcreate(self.fid, _b(swath_name))
        if self.sw <= 0:
            raise OSError(f"{self.path}: SWcreate failed ({self.sw})")

    def _check(self, rc, what):
        if rc != 0:
            raise OSError(f"{self.path}: HDF-EOS {what} failed ({rc})")

    def dim(self, name: str, size: int):
        self._check(self.lib.SWdefdim(self.sw, _b(name), int(size)), f"SWdefdim {name}")

    def field(self, name: str, dims: str, data: np.ndarray, geo: bool = False, fill=None):
        data = np.ascontiguousarray(data)
        nt = DFNT[data.dtype]
        define = self.lib.SWdefgeofield if geo else self.lib.SWdefdatafield
        self._check(define(self.sw, _b(name), _b(dims), nt, HDFE_NOMERGE), f"define {name}")
        if fill is not None:
            fv = np.array([fill], dtype=data.dtype)
            self._check(self.lib.SWsetfillvalue(self.sw, _b(name), fv.ctypes.data_as(ctypes.c_void_p)),
                        f"SWsetfillvalue {name}")
        start = (ctypes.c_int32 * data.ndim)(*([0] * data.ndim))
        edge = (ctypes.c_int32 * data.ndim)(*data.shape)
        self._check(self.lib.SWwritefield(self.sw, _b(name), start, None, edge,
                                          data.ctypes.data_as(ctypes.c_void_p)), f"SWwritefield {name}")

    def attr(self, name: str, value):
        if isinstance(value, str):
            raw = value.encode("ascii")
            buf = ctypes.create_string_buffer(raw, len(raw))
            self._check(self.lib.SWwriteattr(self.sw, _b(name), DFNT_CHAR8, len(raw), buf), f"attr {name}")
            return
        a = np.ascontiguousarray(np.atleast_1d(value))
        self._check(self.lib.SWwriteattr(self.sw, _b(name), DFNT[a.dtype], a.size,
                                         a.ctypes.data_as(ctypes.c_void_p)), f"attr {name}")

    def close(self):
        if self.sw:
            self.lib.SWdetach(self.sw)
            self.sw = 0
        if self.fid:
            self.lib.SWclose(self.fid)
            self.fid = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
