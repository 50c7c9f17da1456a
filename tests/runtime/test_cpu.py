"""The CPU's capability (``runtime.cpu``): read from its flags, lowered (never raised) by the environment."""

import pytest

from turboseq.runtime import cpu
from turboseq.runtime.cpu import Capability

# flag sets as /proc/cpuinfo prints them (the relevant subset, plus noise)
SAPPHIRE_RAPIDS = (
    "fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16"
)
ZEN4 = "fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx512vl"
CASCADE_LAKE = "fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni"
ALDER_LAKE = "fpu sse2 avx avx2 fma avx_vnni"  # AVX-VNNI without AVX-512: fbgemm's AVX2 kernels
OLD = "fpu sse2 sse4_2 avx"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (SAPPHIRE_RAPIDS, Capability.AMX),
        (ZEN4, Capability.AVX512_BF16),
        (CASCADE_LAKE, Capability.AVX512_VNNI),
        (ALDER_LAKE, Capability.AVX2),
        (OLD, Capability.BASELINE),
        ("", Capability.BASELINE),
        # AMX flags without AVX-512 BF16 (no such CPU, but a hypervisor may hide flags): the levels build on
        # each other, so the highest complete one counts
        ("avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8 amx_bf16", Capability.AVX512_VNNI),
    ],
)
def test_capability_from_flags(flags, expected):
    assert cpu.detect(frozenset(flags.split())) == expected


def test_the_environment_lowers_the_capability_and_is_checked():
    assert cpu.parse("AVX2", Capability.AMX) == Capability.AVX2
    assert cpu.parse("baseline", Capability.AVX2) == Capability.BASELINE
    with pytest.raises(ValueError) as err:
        cpu.parse("amx", Capability.AVX512_BF16)
    assert str(err.value) == "TURBOSEQ_CPU_CAPABILITY='amx' is above what this CPU has (avx512_bf16)"
    with pytest.raises(ValueError) as err:
        cpu.parse("sse", Capability.AMX)
    assert str(err.value) == (
        "TURBOSEQ_CPU_CAPABILITY='sse' is not a capability; valid: baseline, avx2, avx512_vnni, avx512_bf16, amx"
    )


def test_every_capability_has_an_auto_type():
    assert set(cpu.AUTO) == set(Capability)
    assert cpu.AUTO[Capability.BASELINE] == "float32"  # fbgemm needs AVX2


def test_cpu_info_names_the_cpu_and_what_it_chooses_by(monkeypatch):
    monkeypatch.delenv(cpu.ENV, raising=False)
    info = cpu.cpu_info()
    assert info.capability == info.detected
    assert info.model and info.describe() == f"{info.model} [{info.detected.label}]"
    monkeypatch.setenv(cpu.ENV, "baseline")
    lowered = cpu.cpu_info()
    assert lowered.capability == Capability.BASELINE and lowered.detected == info.detected
    if info.detected != Capability.BASELINE:
        assert lowered.describe().endswith(f"[{info.detected.label}, chosen as baseline (TURBOSEQ_CPU_CAPABILITY)]")
    assert lowered.as_dict()["capability"] == "baseline"
    assert cpu.auto_compute_type() == "float32"
