"""What this CPU can do, read once: the capability the kernels and ``compute_type="auto"`` are chosen by.

Capabilities, from the most to the least:

- ``amx``: AMX tiles for int8 and bfloat16 (Intel Xeon from Sapphire Rapids on)
- ``avx512_bf16``: AVX-512 with VNNI and BF16 dot products, no AMX (AMD Zen 4 and 5, Intel Cooper Lake)
- ``avx512_vnni``: AVX-512 with VNNI int8 dot products (Intel Cascade Lake, Ice Lake)
- ``avx2``: AVX2 and FMA, no AVX-512 (most laptops and desktops, AMD Zen 1-3)
- ``baseline``: none of those (or a CPU that is not x86)

``TURBOSEQ_CPU_CAPABILITY`` set to one of these names makes turboseq choose as on a CPU with that capability, so a
machine can run the choices of a smaller one (tests do); naming one above what the CPU has is refused, as the
kernels it implies would not run. The kernels below turboseq (oneDNN, fbgemm) still read the hardware themselves.
"""

from __future__ import annotations

import enum
import os
import platform
from dataclasses import dataclass
from functools import cache

ENV = "TURBOSEQ_CPU_CAPABILITY"


class Capability(enum.IntEnum):
    BASELINE = 0
    AVX2 = 1
    AVX512_VNNI = 2
    AVX512_BF16 = 3
    AMX = 4

    @property
    def label(self) -> str:
        return self.name.lower()


# The flags (as /proc/cpuinfo names them) each capability needs, on top of those of the capabilities below it.
_NEEDS = {
    Capability.AVX2: {"avx2", "fma"},
    Capability.AVX512_VNNI: {"avx512f", "avx512bw", "avx512_vnni"},
    Capability.AVX512_BF16: {"avx512_bf16"},
    Capability.AMX: {"amx_tile", "amx_int8", "amx_bf16"},
}

# What ``compute_type="auto"`` means per capability, from the own-process benches in docs/compute-types.md:
# AMX multiplies bfloat16 several times faster than fbgemm's int8 from 16 rows up; without AMX, fbgemm's int8
# (VNNI, or AVX2's pair-wise products) is the fastest product, and bfloat16 is slower than float32 without it.
AUTO = {
    Capability.AMX: "bfloat16",
    Capability.AVX512_BF16: "int8",
    Capability.AVX512_VNNI: "int8",
    Capability.AVX2: "int8",
    Capability.BASELINE: "float32",
}


@dataclass(frozen=True)
class CpuInfo:
    model: str  # the model name the CPU reports
    flags: frozenset[str]
    detected: Capability  # what the hardware has
    capability: Capability  # what turboseq chooses by (lowered by TURBOSEQ_CPU_CAPABILITY)

    def describe(self) -> str:
        """One line for bench output and logs: the CPU, its capability and the one chosen by if lowered."""
        forced = f", chosen as {self.capability.label} ({ENV})" if self.capability != self.detected else ""
        return f"{self.model} [{self.detected.label}{forced}]"

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "capability": self.capability.label,
            "detected": self.detected.label,
            "features": sorted(self.flags & set().union(*_NEEDS.values())),
        }


def detect(flags: frozenset[str]) -> Capability:
    """The highest capability whose flags (and those of every capability below it) are all in ``flags``."""
    best = Capability.BASELINE
    for level in sorted(_NEEDS):
        if not _NEEDS[level] <= flags:
            break
        best = level
    return best


def parse(value: str, detected: Capability) -> Capability:
    """``TURBOSEQ_CPU_CAPABILITY``'s value as a capability, or a ValueError saying what is valid."""
    names = {c.label: c for c in Capability}
    chosen = names.get(value.strip().lower())
    if chosen is None:
        raise ValueError(f"{ENV}={value!r} is not a capability; valid: {', '.join(sorted(names, key=names.get))}")
    if chosen > detected:
        raise ValueError(f"{ENV}={value!r} is above what this CPU has ({detected.label})")
    return chosen


def _read_cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine() or "unknown CPU", flags


@cache
def _hardware() -> tuple[str, frozenset[str]]:
    return _read_cpuinfo()


def cpu_info() -> CpuInfo:
    """This CPU, its detected capability and the one turboseq chooses by (``TURBOSEQ_CPU_CAPABILITY`` read on
    every call, so a test can lower it)."""
    model, flags = _hardware()
    detected = detect(flags)
    value = os.environ.get(ENV)
    return CpuInfo(model, flags, detected, parse(value, detected) if value else detected)


def at_least(level: Capability) -> bool:
    """Whether turboseq chooses as on a CPU with ``level`` or more: cheap enough for a kernel choice per call
    (cached per value of ``TURBOSEQ_CPU_CAPABILITY``, which is still read each time)."""
    return _capability(os.environ.get(ENV)) >= level


@cache
def _capability(_forced: str | None) -> Capability:
    return cpu_info().capability


def auto_compute_type() -> str:
    """What ``compute_type="auto"`` means on this CPU (before checking the build supports it)."""
    return AUTO[cpu_info().capability]
