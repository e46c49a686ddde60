"""What the CUDA driver says about the GPUs here, asked directly (``libcuda`` through ctypes): no torch, CuPy or
TensorRT needed, so the same answer reaches the exporter (is a GPU visible, what is its compute capability), the
generator's backend choice and the benchmarks, whichever Python packages are installed.

Uses the driver API's documented entry points only: ``cuInit``, ``cuDeviceGetCount``, ``cuDeviceGet``,
``cuDeviceGetName``, ``cuDeviceGetAttribute``, ``cuDeviceTotalMem_v2``, ``cuDriverGetVersion``, and for memory in use
``cuDevicePrimaryCtxRetain``, ``cuCtxPushCurrent_v2``, ``cuMemGetInfo_v2``, ``cuCtxPopCurrent_v2``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_COMPUTE_CAPABILITY_MAJOR = 75  # CUdevice_attribute values (cuda.h)
_COMPUTE_CAPABILITY_MINOR = 76


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "9.0", as TensorRT plans are keyed
    total_memory_bytes: int


class CudaUnavailable(RuntimeError):
    """No usable CUDA driver or device; the message says which."""


@functools.lru_cache(maxsize=1)
def _driver() -> ctypes.CDLL:
    names = ["libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda"), "nvcuda.dll"]
    errors = []
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            errors.append(f"{name}: {exc}")
            continue
        _check(lib, lib.cuInit(0), "cuInit")
        return lib
    raise CudaUnavailable("no CUDA driver library could be loaded (" + "; ".join(errors) + ")")


def _check(lib: ctypes.CDLL, code: int, call: str) -> None:
    if code != 0:
        text = ctypes.c_char_p()
        lib.cuGetErrorString(code, ctypes.byref(text))
        raise CudaUnavailable(f"{call} failed: CUDA driver error {code} ({(text.value or b'unknown').decode()})")


def device_count() -> int:
    """Number of CUDA devices the driver shows this process; 0 where there is no driver or no device."""
    try:
        lib = _driver()
    except CudaUnavailable as exc:
        logger.debug("no CUDA: %s", exc)
        return 0
    count = ctypes.c_int()
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def gpu_info(index: int = 0) -> GpuInfo:
    """Name, compute capability and memory of device ``index``; raises CudaUnavailable when there is none."""
    lib = _driver()
    count = device_count()
    if not 0 <= index < count:
        raise CudaUnavailable(f"CUDA device {index} does not exist (the driver shows {count})")
    device = ctypes.c_int()
    _check(lib, lib.cuDeviceGet(ctypes.byref(device), index), "cuDeviceGet")
    name = ctypes.create_string_buffer(256)
    _check(lib, lib.cuDeviceGetName(name, len(name), device), "cuDeviceGetName")
    major, minor, total = ctypes.c_int(), ctypes.c_int(), ctypes.c_size_t()
    _check(lib, lib.cuDeviceGetAttribute(ctypes.byref(major), _COMPUTE_CAPABILITY_MAJOR, device), "cuDeviceGetAttribute")
    _check(lib, lib.cuDeviceGetAttribute(ctypes.byref(minor), _COMPUTE_CAPABILITY_MINOR, device), "cuDeviceGetAttribute")
    _check(lib, lib.cuDeviceTotalMem_v2(ctypes.byref(total), device), "cuDeviceTotalMem_v2")
    return GpuInfo(index, name.value.decode(errors="replace"), f"{major.value}.{minor.value}", total.value)


def driver_version() -> str | None:
    """The driver's CUDA version, e.g. "13.0"; None without a driver."""
    try:
        lib = _driver()
    except CudaUnavailable:
        return None
    version = ctypes.c_int()
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def memory_in_use(index: int = 0) -> int:
    """Bytes in use on device ``index`` as the driver counts them (every allocation on the device: torch's, ONNX
    Runtime's, CuPy's and TensorRT's pools alike, and other processes'). Raises CudaUnavailable without a device."""
    lib = _driver()
    if not 0 <= index < device_count():
        raise CudaUnavailable(f"CUDA device {index} does not exist (the driver shows {device_count()})")
    device, context, free, total = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_size_t()
    _check(lib, lib.cuDeviceGet(ctypes.byref(device), index), "cuDeviceGet")
    _check(lib, lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
    try:
        _check(lib, lib.cuCtxPushCurrent_v2(context), "cuCtxPushCurrent")
        try:
            _check(lib, lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo")
        finally:
            lib.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
    finally:
        lib.cuDevicePrimaryCtxRelease_v2(device)
    return total.value - free.value
