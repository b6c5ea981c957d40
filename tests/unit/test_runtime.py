"""The dtype policy `runtime.dtype_policy: auto` chooses: by the hardware, never by a CPU's name;
a named policy always wins."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest
import tensorflow as tf

from tasks import runtime
from tasks.runtime import choose_dtype_policy, configure_runtime, cpu_has_bfloat16

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu vme de pse tsc msr pae {flags} avx2 sha_ni
bogomips\t: 5199.99

processor\t: 1
flags\t\t: fpu vme de pse tsc msr pae {flags} avx2 sha_ni
"""


@pytest.fixture
def restore_float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("avx512f avx512_bf16 avx512_vnni", True),
        ("amx_bf16 amx_tile amx_int8", True),
        ("avx512f avx512_vnni avx512_fp16", False),  # float16 vector math, no bfloat16 matmul
        ("", False),
    ],
)
def test_bfloat16_support_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(flags=flags))
    assert cpu_has_bfloat16(cpuinfo) is expected


def test_the_cpu_name_alone_says_nothing(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Intel Xeon Sapphire Rapids avx512_bf16\nflags\t\t: fpu sse2\n")
    assert not cpu_has_bfloat16(cpuinfo)


def test_without_a_cpuinfo_file_bfloat16_is_not_assumed(tmp_path):
    assert not cpu_has_bfloat16(tmp_path / "no-such-file")


@pytest.mark.parametrize(
    ("requested", "num_gpus", "cpu_bfloat16", "expected"),
    [
        ("auto", 0, True, "mixed_bfloat16"),
        ("auto", 0, False, "float32"),
        ("auto", 1, True, "mixed_float16"),
        ("auto", 2, False, "mixed_float16"),
        ("float32", 0, True, "float32"),  # an explicit value wins
        ("mixed_float16", 0, False, "mixed_float16"),
        ("mixed_bfloat16", 0, False, "mixed_bfloat16"),
        ("float32", 1, False, "float32"),
    ],
)
def test_dtype_policy_choice(requested, num_gpus, cpu_bfloat16, expected):
    assert choose_dtype_policy(requested, num_gpus, cpu_bfloat16) == expected


@pytest.mark.parametrize(("cpu_bfloat16", "expected"), [(True, "mixed_bfloat16"), (False, "float32")])
def test_configure_runtime_applies_the_auto_choice_on_a_cpu(
    monkeypatch, restore_float32_policy, cpu_bfloat16, expected
):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("auto means mixed_float16 with a GPU")
    monkeypatch.setattr(runtime, "cpu_has_bfloat16", lambda cpuinfo=Path("/proc/cpuinfo"): cpu_bfloat16)
    configure_runtime(1, dtype_policy="auto")
    assert keras.mixed_precision.global_policy().name == expected
    configure_runtime(1, dtype_policy="float32")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_configure_runtime_sets_a_named_policy(restore_float32_policy):
    configure_runtime(1, dtype_policy="mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
