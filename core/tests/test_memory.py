"""Memory records: text forms and the summary table (SEMANTICS §7.4)."""

from __future__ import annotations

from mlplug import AllocationStatus, BackendMemory, DeviceMemory, Memory
from mlplug.memory import format_bytes

A, F, U = AllocationStatus.ALLOCATED, AllocationStatus.FAILED, AllocationStatus.UNALLOCATED

EXAMPLE = BackendMemory(
    input_weights=Memory(262144000, A),
    cpu=DeviceMemory(
        "CPU",
        "",
        (Memory(), Memory(), Memory(51380224, A)),
        (Memory(), Memory(), Memory()),
        Memory(16777216, A),
    ),
    gpus=(
        DeviceMemory(
            "CUDA0",
            "GPU-1a2b",
            (Memory(100663296, A), Memory(100663296, A), Memory()),
            (Memory(8388608, A), Memory(8388608, A), Memory()),
            Memory(301989888, A),
        ),
    ),
)


def test_memory_str() -> None:
    assert str(Memory(1158266880, A)) == "1158266880A"
    assert str(Memory()) == "0U"
    assert str(Memory(5, F)) == "5F"


def test_backend_memory_str_example() -> None:
    assert str(EXAMPLE) == (
        'InputWeights=262144000A CPU.Weights="[0U 0U 51380224A]" CPU.Graph=16777216A '
        'CUDA0.ID=GPU-1a2b CUDA0.Weights="[100663296A 100663296A 0U]" '
        'CUDA0.Cache="[8388608A 8388608A 0U]" CUDA0.Graph=301989888A'
    )


def test_log_value_omits_empty_entries() -> None:
    empty = DeviceMemory("CPU", "x", (Memory(),), (Memory(),), Memory())
    assert empty.log_value() == {}
    assert BackendMemory(Memory(), empty).log_value() == {}
    assert list(EXAMPLE.gpus[0].log_value()) == ["ID", "Weights", "Cache", "Graph"]


def test_quoting_of_values() -> None:
    d = DeviceMemory("CPU", 'a "b"\\', (), (), Memory(1, A))
    assert str(d) == 'ID="a \\"b\\"\\\\" Graph=1A'


def test_summary_example() -> None:
    assert EXAMPLE.summary().splitlines() == [
        "device  weights    kv cache  graph      total",
        "CUDA0   192.0 MiB  16.0 MiB  288.0 MiB  496.0 MiB",
        "CPU     299.0 MiB  0 B       16.0 MiB   315.0 MiB",
        "total   491.0 MiB  16.0 MiB  304.0 MiB  811.0 MiB",
    ]


def test_summary_marks_failed_cells() -> None:
    mem = BackendMemory(
        Memory(), DeviceMemory("CPU", "", (Memory(2048, F),), (Memory(),), Memory())
    )
    lines = mem.summary().splitlines()
    assert lines[1].split()[1:4] == ["2.0", "KiB", "(failed)"]
    assert lines[2].endswith("2.0 KiB (failed)")


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1024, 1536 * 1024**2, 512 * 1024**2)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 GiB",
        "512.0 MiB",
    ]
