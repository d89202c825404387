"""`throughput_monitor`: tokens/s, samples/s, MFU, HFU and time remaining, as logged metrics.

MFU follows llm-foundry's formula, through the model's `flops_per_batch` (per sequence of T tokens
3 * (2 * n_params * T + 4 * n_layers * d_model * T^2)); HFU counts the forwards that activation
checkpointing recomputes (4 passes instead of 3 when every block is recomputed; the model's
`hardware_flops_per_batch` when it has one). Both are per device: the model FLOPs of this rank's
batch per second, over the device's peak.

Peaks (dense, FLOP/s per device) come from `GPU_PEAK_FLOPS` for A100, H100 and H200 by precision.
On a CPU there is no datasheet number that means anything, so the peak is measured once per
process at fit start: an fp32 GEMM on all the machine's cores for about `cpu_peak_seconds`
(local rank 0 measures while the other local ranks wait; the node's peak is split evenly between
the ranks on the node). Other processes running on the machine lower that measurement.

Rates are taken over the last `window_size` batches from wall-clock time at each batch end and
Composer's global sample/token counters, so the callback reads no tensor and adds no host-device
sync (tests/callbacks/test_host_sync.py counts the reads). Metrics (every `log_interval` batches, once the window holds two batch ends):

  throughput/batches_per_sec, throughput/samples_per_sec, throughput/tokens_per_sec   (all ranks)
  throughput/device/samples_per_sec, throughput/device/tokens_per_sec,
  throughput/device/flops_per_sec, throughput/device/mfu, throughput/device/hfu       (per rank)
  time/remaining_estimate_sec          (left of max_duration at the windowed rate)
  time/first_batch_sec                 (fit start to the end of the first batch, logged once)
  throughput/device/peak_flops         (logged once, at fit start)
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any, Optional

import torch
from composer.core import Callback, State
from composer.loggers import Logger

log = logging.getLogger(__name__)

# Dense peak FLOP/s per device, by Composer precision. 'fp32' is the non-tensor-core rate; 'tf32'
# applies to fp32 runs when torch allows TF32 matmuls.
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "a100": {"amp_bf16": 312e12, "amp_fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "h100": {"amp_bf16": 989e12, "amp_fp16": 989e12, "amp_fp8": 1979e12, "tf32": 494.5e12, "fp32": 67e12},
    "h100 pcie": {"amp_bf16": 756e12, "amp_fp16": 756e12, "amp_fp8": 1513e12, "tf32": 378e12, "fp32": 51e12},
    "h200": {"amp_bf16": 989e12, "amp_fp16": 989e12, "amp_fp8": 1979e12, "tf32": 494.5e12, "fp32": 67e12},
}

_CPU_PEAK_CACHE: dict[float, float] = {}


def gpu_peak_flops(device_name: str, precision: str) -> Optional[float]:
    """The table's peak for a CUDA device name ('NVIDIA H100 80GB HBM3', ...), or None if unknown."""
    name = device_name.lower()
    if "h100" in name and "pcie" in name:
        key = "h100 pcie"
    else:
        key = next((k for k in ("a100", "h200", "h100") if k in name), None)
    if key is None:
        return None
    if precision == "fp32" and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"
    return GPU_PEAK_FLOPS[key].get(precision)


def cpu_core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def measure_cpu_peak_flops(seconds: float = 1.0, n: int = 1024, cache: bool = True) -> float:
    """Best fp32 GEMM rate (FLOP/s) of this machine on all its cores, over about `seconds`.

    Cached per process (a second fit does not measure again) unless `cache` is False.
    """
    if cache and seconds in _CPU_PEAK_CACHE:
        return _CPU_PEAK_CACHE[seconds]
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_core_count())
    try:
        a = torch.randn(n, n)
        b = torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)  # warm-up (thread pool, MKL/oneDNN kernel selection)
        best = 0.0
        deadline = time.perf_counter() + seconds
        while True:
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            elapsed = time.perf_counter() - start
            best = max(best, 2 * n ** 3 / elapsed)
            if time.perf_counter() >= deadline:
                break
    finally:
        torch.set_num_threads(threads)
    if cache:
        _CPU_PEAK_CACHE[seconds] = best
    return best


class ThroughputMonitor(Callback):
    """Tokens/s, samples/s, MFU, HFU and the time remaining (see the module docstring).

    Args:
        window_size: batches over which rates are averaged.
        log_interval: log every this many batches.
        peak_flops: peak FLOP/s per device; None = from the GPU table, or measured on a CPU.
        cpu_peak_seconds: how long the CPU peak measurement runs.
    """

    def __init__(self, window_size: int = 10, log_interval: int = 1, peak_flops: Optional[float] = None,
                 cpu_peak_seconds: float = 1.0):
        if window_size < 1 or log_interval < 1:
            raise ValueError("throughput_monitor: window_size and log_interval must be >= 1")
        self.window_size = window_size
        self.log_interval = log_interval
        self.peak_flops = peak_flops
        self.cpu_peak_seconds = cpu_peak_seconds
        # (wall time, samples, tokens, elapsed fraction of max_duration) at each batch end
        self._window: collections.deque = collections.deque(maxlen=window_size + 1)
        self._device_peak: Optional[float] = None
        self._fit_start: Optional[float] = None
        self._first_batch_logged = False
        self._recomputed_blocks = 0
        self._flops_cache: dict[tuple, tuple[float, float]] = {}

    # ------------------------------------------------------------------ events
    def fit_start(self, state: State, logger: Logger) -> None:
        self._fit_start = time.perf_counter()
        self._window.clear()
        model = state.model.module if hasattr(state.model, "module") else state.model
        recomputed = getattr(model, "recomputed_blocks", None)
        self._recomputed_blocks = recomputed() if callable(recomputed) else 0
        self._device_peak = self._resolve_peak(state)
        if self._device_peak:
            logger.log_metrics({"throughput/device/peak_flops": self._device_peak})
            log.info("throughput_monitor: peak %.3g FLOP/s per device", self._device_peak)
        self._fit_start = time.perf_counter()  # the measurement is not the run's time

    def batch_end(self, state: State, logger: Logger) -> None:
        now = time.perf_counter()
        ts = state.timestamp
        elapsed = state.get_elapsed_duration()
        self._window.append((now, int(ts.sample), int(ts.token), float(elapsed) if elapsed is not None else None))
        metrics: dict[str, Any] = {}
        if not self._first_batch_logged and self._fit_start is not None:
            metrics["time/first_batch_sec"] = now - self._fit_start
            self._first_batch_logged = True
        if len(self._window) >= 2 and int(ts.batch) % self.log_interval == 0:
            metrics.update(self._rates(state))
        if metrics:
            logger.log_metrics(metrics)

    # ------------------------------------------------------------------ helpers
    def _rates(self, state: State) -> dict[str, float]:
        (t0, s0, k0, f0), (t1, s1, k1, f1) = self._window[0], self._window[-1]
        dt = t1 - t0
        if dt <= 0:
            return {}
        batches = len(self._window) - 1
        world = _world_size()
        out = {
            "throughput/batches_per_sec": batches / dt,
            "throughput/samples_per_sec": (s1 - s0) / dt,
            "throughput/tokens_per_sec": (k1 - k0) / dt,
            "throughput/device/samples_per_sec": (s1 - s0) / dt / world,
            "throughput/device/tokens_per_sec": (k1 - k0) / dt / world,
        }
        flops = self._batch_flops(state)
        if flops is not None:
            model_flops, hardware_flops = flops
            out["throughput/device/flops_per_sec"] = model_flops * batches / dt
            if self._device_peak:
                out["throughput/device/mfu"] = model_flops * batches / dt / self._device_peak
                out["throughput/device/hfu"] = hardware_flops * batches / dt / self._device_peak
        if f0 is not None and f1 is not None and f1 > f0:
            out["time/remaining_estimate_sec"] = max(0.0, 1.0 - f1) * dt / (f1 - f0)
        return out

    def _batch_flops(self, state: State) -> Optional[tuple[float, float]]:
        """(model FLOPs, hardware FLOPs) of this rank's batch; cached by batch shape."""
        model = state.model.module if hasattr(state.model, "module") else state.model
        flops_fn = getattr(model, "flops_per_batch", None)
        if flops_fn is None:
            return None
        batch = state.batch
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        key = tuple(ids.shape) if ids is not None else None
        if key is not None and key in self._flops_cache:
            return self._flops_cache[key]
        model_flops = float(flops_fn(batch))
        hw_fn = getattr(model, "hardware_flops_per_batch", None)
        if hw_fn is not None:
            hardware_flops = float(hw_fn(batch, self._recomputed_blocks))
        else:
            hardware_flops = model_flops
        if key is not None:
            self._flops_cache[key] = (model_flops, hardware_flops)
        return model_flops, hardware_flops

    def _resolve_peak(self, state: State) -> Optional[float]:
        if self.peak_flops:
            return float(self.peak_flops)
        device = state.device.name if hasattr(state.device, "name") else str(state.device)
        precision = state.precision.value if hasattr(state.precision, "value") else str(state.precision)
        if device == "gpu" and torch.cuda.is_available():
            peak = gpu_peak_flops(torch.cuda.get_device_name(), precision)
            if peak is None:
                log.warning("throughput_monitor: no peak FLOP/s known for %s at %s; MFU is not logged "
                            "(set peak_flops)", torch.cuda.get_device_name(), precision)
            return peak
        if device == "cpu":
            return _cpu_peak_per_rank(self.cpu_peak_seconds)
        return None


def _world_size() -> int:
    from composer.utils import dist

    return dist.get_world_size()


def _cpu_peak_per_rank(seconds: float) -> float:
    """The node's measured fp32 GEMM peak, split between the ranks on the node."""
    from composer.utils import dist

    local_world = dist.get_local_world_size()
    if local_world <= 1:
        return measure_cpu_peak_flops(seconds)
    # Local rank 0 measures alone; the others wait in the gather. Nodes are taken as alike.
    mine = measure_cpu_peak_flops(seconds) if dist.get_local_rank() == 0 else 0.0
    node_peak = max(dist.all_gather_object(mine))
    return node_peak / local_world
