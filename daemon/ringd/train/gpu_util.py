"""GPU utilisation, sampled in a background thread (torch-free).

Through NVML (``libnvidia-ml.so.1``, which every NVIDIA driver installs) by ctypes,
so no Python package is needed; falls back to ``nvidia-smi``. Utilisation is what
``nvidia-smi`` shows: the percentage of the last sample period (1/6 s to 1 s) in
which a kernel was running.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import statistics
import subprocess
import threading
from collections.abc import Callable


class _Utilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


def _nvml_reader(cuda_index: int, pci_bus_id: str | None) -> Callable[[], int | None] | None:
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
        if lib.nvmlInit_v2() != 0:
            return None
    except (OSError, AttributeError):
        return None
    handle = ctypes.c_void_p()
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
    if pci_bus_id:
        ok = lib.nvmlDeviceGetHandleByPciBusId_v2(pci_bus_id.encode(), ctypes.byref(handle)) == 0
    elif cuda_index < len(visible) and visible[cuda_index].startswith(("GPU-", "MIG-")):
        ok = lib.nvmlDeviceGetHandleByUUID(visible[cuda_index].encode(), ctypes.byref(handle)) == 0
    else:
        # CUDA_VISIBLE_DEVICES=3,5: CUDA's device 1 is NVML's device 5.
        index = int(visible[cuda_index]) if cuda_index < len(visible) else cuda_index
        ok = lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) == 0
    if not ok:
        return None

    def read() -> int | None:
        rates = _Utilization()
        if lib.nvmlDeviceGetUtilizationRates(handle, ctypes.byref(rates)) != 0:
            return None
        return int(rates.gpu)

    return read


def _smi_reader(cuda_index: int, pci_bus_id: str | None) -> Callable[[], int | None] | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
    target = pci_bus_id or (visible[cuda_index] if cuda_index < len(visible) else str(cuda_index))

    def read() -> int | None:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", target],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            return int(out.split()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    return read


def utilization_reader(
    cuda_index: int = 0, pci_bus_id: str | None = None
) -> Callable[[], int | None] | None:
    """A function returning the GPU's current utilisation (%), or None if none can be read."""
    return _nvml_reader(cuda_index, pci_bus_id) or _smi_reader(cuda_index, pci_bus_id)


class UtilizationSampler:
    """Samples utilisation every ``interval_s`` in a daemon thread while it is open."""

    def __init__(self, read: Callable[[], int | None], interval_s: float = 0.2) -> None:
        self._read = read
        self._interval = interval_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-util", daemon=True)

    def __enter__(self) -> UtilizationSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def latest(self) -> int | None:
        return self.samples[-1] if self.samples else None

    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None
