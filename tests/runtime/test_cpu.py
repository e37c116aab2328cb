"""The vector width is chosen from the CPU's features, and the user's numba CPU settings win."""

from __future__ import annotations

import numba
import pytest

from runtime.kernels import cpu


def test_width_follows_the_features() -> None:
    features = cpu.host_features()
    described = cpu.describe()
    assert set(described["features"]) <= set(cpu.REPORTED)  # type: ignore[call-overload]
    if all(features.get(name) for name in cpu.WIDE):
        assert cpu.VECTOR_WIDTH in ("512-bit", "as NUMBA_CPU_NAME / NUMBA_CPU_FEATURES set")
    else:
        assert cpu.VECTOR_WIDTH != "512-bit"


def test_user_settings_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    before = numba.config.CPU_FEATURES  # type: ignore[attr-defined]
    monkeypatch.setenv("NUMBA_CPU_NAME", "generic")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "sentinel")
    assert cpu.choose_vector_width() == "as NUMBA_CPU_NAME / NUMBA_CPU_FEATURES set"
    assert numba.config.CPU_FEATURES == "sentinel"  # type: ignore[attr-defined]
    monkeypatch.setattr(numba.config, "CPU_FEATURES", before)


def test_wide_choice_lifts_only_the_256_bit_preference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NUMBA_CPU_NAME", raising=False)
    monkeypatch.delenv("NUMBA_CPU_FEATURES", raising=False)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", numba.config.CPU_FEATURES)  # type: ignore[attr-defined]
    monkeypatch.setattr(cpu, "host_features", lambda: dict.fromkeys(cpu.WIDE, True))
    assert cpu.choose_vector_width() == "512-bit"
    assert numba.config.CPU_FEATURES.endswith(",-prefer-256-bit")  # type: ignore[attr-defined]
    monkeypatch.setattr(cpu, "host_features", lambda: {"avx2": True})
    assert cpu.choose_vector_width() == "256-bit"


def test_kernels_use_only_features_numba_compiles_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "host_features", lambda: {"avx2": True, "avx512vbmi": True})
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "")  # a bare NUMBA_CPU_NAME: no features
    assert not cpu.kernels_can_use("avx2")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+sse2,+avx2,-avx512vbmi")
    assert cpu.kernels_can_use("avx2") and not cpu.kernels_can_use("avx2", "avx512vbmi")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,+avx512vbmi")
    assert cpu.kernels_can_use("avx2", "avx512vbmi")
    monkeypatch.setattr(cpu, "host_features", lambda: {"avx2": True})
    assert not cpu.kernels_can_use("avx512vbmi")  # in the target but not on this CPU
    # unset, numba compiles for the host as it reads it: NUMBA_ENABLE_AVX=0 drops every AVX feature
    monkeypatch.setattr(numba.config, "CPU_FEATURES", None)
    monkeypatch.setattr(numba.config, "ENABLE_AVX", False)
    assert not cpu.kernels_can_use("avx2")


def test_description_names_what_numba_compiles_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # a cache built for NUMBA_CPU_NAME=generic: no features, whatever the host has
    monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "")
    assert cpu.describe()["llvm_cpu"] == "generic" and cpu.describe()["features"] == []
    monkeypatch.setattr(cpu, "host_features", lambda: {"avx2": True, "fma": True})
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2")
    assert cpu.describe()["features"] == ["avx2"]
