"""Device facts the trainer needs: physical cores, peak FLOP/s, a readable device name.

Nothing here imports torch at module level, so the CLI can size the CPU thread
pool before torch starts it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Dense bf16 tensor-core peak FLOP/s without sparsity, from the vendors' data
# sheets. Matched as substrings of `torch.cuda.get_device_name()`, first match
# wins, so the more specific names come first.
GPU_PEAK_FLOPS: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
]


def physical_cores() -> int:
    """Return the number of physical cores this process may run on.

    Counts distinct (package, core) pairs among the CPUs in the affinity mask,
    so SMT siblings count once. Without Linux's sysfs topology it returns the
    logical CPU count.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((package, core))
    return max(1, len(cores))


# mallopt parameter numbers from glibc's <malloc.h>, and the defaults of the two settings.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536


def _glibc() -> Any:
    """Return the C library through ctypes, or None where it is not glibc on Linux."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    PyTorch allocates CPU tensors with malloc. By default glibc serves blocks
    above its mmap threshold (at most 32 MiB) with fresh mmap calls, and it
    trims free memory at the top of the heap. So every training step maps new
    pages and takes a page fault on first touch of each 4 KiB. For the `tiny` preset
    at batch 16 x 256 that was about 70,000 faults and 13% of the step's CPU time,
    measured on a 2-core AMD EPYC VM with glibc 2.36. With mmap disabled and
    trimming off, the heap grows to the peak once and later steps reuse it.

    The setting lasts for the rest of the process, and its heap never shrinks.
    Freed blocks are reused but fragment, so resident memory can grow to about
    twice the default: 880 MB instead of 420 MB for a one-layer `tiny` model in
    the same measurement. Returns False, changing nothing, where the C library
    is not glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success. A trim threshold of -1 turns trimming off.
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))


def release_free_memory() -> bool:
    """Hand the free pages inside glibc's heap back to the kernel (`malloc_trim(0)`).

    Tensors up to glibc's mmap threshold (which rises to 32 MiB once such blocks are
    freed) live in the heap, and the pages of freed ones stay resident until reused.
    Holes between live blocks are never trimmed on their own, so an analysis suite's
    resident memory can drift up from one analysis and batch to the next. Calling this
    between them keeps it near the live memory. Returns False where the C library is
    not glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@contextmanager
def reused_heap() -> Iterator[bool]:
    """Serve every allocation from a heap that is not trimmed inside the block.

    The analyses make tensors of tens to hundreds of MiB (logits over the
    vocabulary, stacked layer activations) thousands of times. By default glibc
    maps each one afresh and takes a page fault per 4 KiB: skip effects on 8 x 256
    tokens of smollm2-135m took 12.6 to 16.8 million faults and 21 to 30 s of system
    time per part. Inside this block blocks are reused as in `retain_freed_memory`. On exit
    the free pages go back to the kernel and glibc's default mmap and trim
    settings return, though its mmap threshold stays where it was instead of
    adapting. Yields False, changing nothing, where the C library is not glibc.
    """
    # NOTE: untested. A probe of five 64 MiB allocations inside and after the block gave
    # fault counts that varied from run to run (glibc reused none, one or all of them).
    libc = _glibc()
    if libc is None:
        yield False
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, -1)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def cpu_peak_flops(threads: int) -> float | None:
    """Estimate the float32 peak FLOP/s of `threads` cores of this CPU, or None if unknown.

    An estimate: cores x clock x FLOPs per cycle, with 2 FMA units of 16
    float32 lanes (AVX-512) or 8 lanes (AVX2), i.e. 64 or 32 FLOPs per cycle,
    and the clock from /proc/cpuinfo's "cpu MHz" (the current, not the boost,
    clock). Real float32 GEMM on a core reaches well under this.
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    mhz, flags = None, ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "cpu MHz" and mhz is None:
            mhz = float(value)
        elif key == "flags" and not flags:
            flags = value
    if mhz is None:
        return None
    words = set(flags.split())
    if "avx512f" in words:
        per_cycle = 64
    elif "avx2" in words and "fma" in words:
        per_cycle = 32
    else:
        per_cycle = 8
    return threads * mhz * 1e6 * per_cycle


def device_description(device: Any) -> str:
    """Return a human-readable name of a torch device: the GPU model or the CPU model."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu ({line.partition(':')[2].strip()})"
    except OSError:
        pass
    return "cpu"


def peak_flops(device: Any, threads: int) -> tuple[float | None, str]:
    """Return (peak FLOP/s, where the figure came from) for MFU on `device`."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS:
            if key in name:
                return flops, f"bf16 data-sheet peak of {key}"
        return None, f"no peak-FLOPs entry for {name!r}; set peak_flops"
    flops = cpu_peak_flops(threads)
    if flops is None:
        return None, "unknown CPU peak; set peak_flops"
    return flops, f"float32 estimate for {threads} core(s): clock x SIMD FMA width"
