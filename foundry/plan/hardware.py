"""The accelerators `foundry plan` knows, and the fixed assumptions it makes about a cluster.

Figures are vendor datasheet values for the SXM parts as deployed in DGX/HGX nodes:

- memory: what the device reports (nvidia-smi), in GiB.
- peak_bf16_tflops: dense bf16 tensor-core peak (no 2:4 sparsity). This is the denominator of
  MFU, the same peaks llm-foundry divides by (A100 312, H100 SXM 989); the H200 has the H100's
  compute die, so the same peak.
- nic_gbps: inter-node network per GPU, GB/s one direction (one HDR 200 Gb/s HCA per A100,
  one NDR 400 Gb/s HCA per H100/H200, as in DGX A100 / DGX H100).
- nvlink_gbps: intra-node NVLink per GPU, GB/s one direction (A100 600 GB/s, H100/H200 900 GB/s
  bidirectional).
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024 ** 3
GB = 1e9


@dataclass(frozen=True)
class GPU:
    name: str
    label: str
    memory_gib: float
    peak_bf16_tflops: float
    nic_gbps: float
    nvlink_gbps: float
    family: str  # GPUs of one family share a compute die (and llm-foundry MFU figures)

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GiB

    @property
    def peak_flops(self) -> float:
        return self.peak_bf16_tflops * 1e12


GPUS: dict[str, GPU] = {
    'a100-40gb': GPU('a100-40gb', 'A100-SXM4-40GB', 40.0, 312.0, 25.0, 300.0, 'a100'),
    'a100-80gb': GPU('a100-80gb', 'A100-SXM4-80GB', 80.0, 312.0, 25.0, 300.0, 'a100'),
    'h100': GPU('h100', 'H100-SXM5-80GB', 80.0, 989.0, 50.0, 450.0, 'hopper'),
    'h200': GPU('h200', 'H200-SXM-141GB', 140.0, 989.0, 50.0, 450.0, 'hopper'),
}


def get_gpu(name: str) -> GPU:
    key = name.lower()
    if key not in GPUS:
        raise ValueError(f'unknown GPU {name!r}; choose one of {", ".join(GPUS)}')
    return GPUS[key]


@dataclass(frozen=True)
class Assumptions:
    """Knobs of the estimate that no config states. All can be changed from the command line."""

    # Device memory torch's allocator never sees: CUDA context, NCCL buffers, cuBLAS workspaces.
    reserved_gib: float = 1.5
    # Headroom kept free for allocator fragmentation: a plan "fits" only below this fraction of
    # the remaining memory, and is "tight" between it and 100%.
    fit_fraction: float = 0.90
    # Checkpoint storage: each node writes its shards at this rate; the store caps the total.
    ckpt_node_gbps: float = 1.0
    ckpt_storage_gbps: float = 20.0
    # After a failure: detect it, reschedule, start processes, rendezvous, rebuild the model;
    # reading the checkpoint back is added on top.
    restart_overhead_s: float = 300.0
    # MFU when llm-foundry publishes nothing close to this model size and GPU.
    fallback_mfu: float = 0.45
