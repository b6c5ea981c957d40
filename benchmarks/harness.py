"""Small helpers shared by the benchmarks: timing, memory of a process, results and tables.

A measured implementation runs in its own interpreter (`run_in_child`), so its peak resident
memory is its own and not the sum of everything the benchmark did before. Nothing here imports
TensorFlow: a child's memory is what its own module imports.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


class ChildError(RuntimeError):
    """A measured child process failed; carries the end of its output."""


# --- Timing -----------------------------------------------------------------------------------


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    """`function()`'s result and its wall-clock seconds."""
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


@dataclass(frozen=True)
class Timing:
    warmup_seconds: list[float]  # tracing and compilation happen here
    seconds: list[float]  # the measured calls, after warm-up

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)


def time_calls(function: Callable[[], Any], warmup: int = 1, repeats: int = 3) -> Timing:
    """Seconds of `warmup` calls (reported apart: they include tracing), then of `repeats` calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    warmup_seconds = [timed(function)[1] for _ in range(warmup)]
    return Timing(warmup_seconds, [timed(function)[1] for _ in range(repeats)])


# --- Memory -----------------------------------------------------------------------------------


def _proc_status_bytes(field: str) -> int | None:
    """A `kB` field of /proc/self/status (Linux) in bytes, or None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        return None
    return None


def current_rss_bytes() -> int:
    """Resident memory of this process now (0 where /proc is missing)."""
    return _proc_status_bytes("VmRSS") or 0


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory."""
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max_rss if sys.platform == "darwin" else max_rss * 1024  # bytes on macOS, KiB on Linux


# --- Compute bounds ---------------------------------------------------------------------------


def float_ops(concrete_function: Any) -> int:
    """Floating-point operations of one call of a traced TensorFlow function (its graph as
    TensorFlow's profiler counts them: matmuls, convolutions and their gradients, elementwise ops)."""
    from tensorflow.python.profiler import model_analyzer, option_builder

    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(model_analyzer.profile(concrete_function.graph, options=options).total_float_ops)


def executed_operations(concrete_function: Any) -> list[Any]:
    """The ops of a traced function that its outputs depend on: what runs when it is called.
    TensorFlow prunes the rest, such as the filter gradients `tape.gradient` builds beside the input
    gradients when only d loss / d pixels is asked for (`float_ops` counts those too)."""
    needed: set[str] = set()
    pending = [tensor.op for tensor in concrete_function.outputs]
    while pending:
        operation = pending.pop()
        if operation.name not in needed:
            needed.add(operation.name)
            pending += [tensor.op for tensor in operation.inputs] + list(operation.control_inputs)
    return [operation for operation in concrete_function.graph.get_operations() if operation.name in needed]


def operation_flops(operation: Any) -> int:
    """One op's FLOPs as TensorFlow's profiler counts them (0 for ops it has no count for)."""
    from tensorflow.python.framework import ops
    from tensorflow.python.profiler.internal import flops_registry  # noqa: F401  registers the counts

    try:
        return int(ops.get_stats_for_node_def(operation.graph, operation.node_def, "flops").value or 0)
    except ValueError:  # a shape the count needs is unknown; the profiler skips these too
        return 0


def operation_dtypes(operations: Sequence[Any]) -> dict[str, list[str]]:
    """{op type: the dtypes its ops compute in}, for ops with a single type attribute `T`."""
    import tensorflow as tf

    dtypes: dict[str, set[str]] = {}
    for operation in operations:
        if "T" in operation.node_def.attr and isinstance(dtype := operation.get_attr("T"), tf.DType):
            dtypes.setdefault(operation.type, set()).add(dtype.name)
    return {kind: sorted(names) for kind, names in sorted(dtypes.items())}


def matmul_peak_flops(dtype: str, size: int = 2048, repeats: int = 5) -> float:
    """This CPU's attainable rate for `dtype` ("float32" or "bfloat16"): FLOP/s of the best of
    `repeats` square matmuls of `size`, the densest work TensorFlow does. A step's FLOP/s over this
    says how much of the machine it uses: near 1, compute bounds it; far below, something else does
    (small ops, the input pipeline, Python)."""
    import tensorflow as tf

    a = tf.random.stateless_uniform((size, size), seed=(1, 2), dtype=tf.float32)
    a = tf.cast(a, dtype)
    product = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x), tf.float32)))
    product(a).numpy()  # traced and warmed up
    best = min(timed(lambda: product(a).numpy())[1] for _ in range(repeats))
    return 2 * size**3 / best


KERNEL_EVENT = re.compile(r"(?P<name>[^\s:]+):(?P<type>\w+)")  # a kernel's trace event: "op name:op type"


def kernel_seconds(
    call: Callable[[], Any], kind_of: Callable[[str, str], str], calls: int = 1
) -> dict[str, float]:
    """Seconds per call of `call` spent in each kind of kernel, summed over TensorFlow's threads,
    from a profiler trace of `calls` calls; `kind_of(op_name, op_type)` names a kernel's kind.
    Kinds that never ran are absent. Reads the trace's XPlane protobuf (no public reader)."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gendl-bench-profile-") as directory:
        tf.profiler.experimental.start(directory)
        for _ in range(calls):
            call()
        tf.profiler.experimental.stop()
        for trace in Path(directory).rglob("*.xplane.pb"):
            for plane in xplane_pb2.XSpace.FromString(trace.read_bytes()).planes:
                names = {key: metadata.name for key, metadata in plane.event_metadata.items()}
                for line in plane.lines:
                    for event in line.events:
                        if kernel := KERNEL_EVENT.fullmatch(names.get(event.metadata_id, "")):
                            kind = kind_of(kernel["name"], kernel["type"])
                            seconds[kind] = seconds.get(kind, 0.0) + event.duration_ps * 1e-12 / calls
    return dict(sorted(seconds.items()))


# --- Child processes --------------------------------------------------------------------------


def run_in_child(
    module: str, function: str, kwargs: dict[str, Any], env: dict[str, str] | None = None
) -> dict[str, Any]:
    """`module.function(**kwargs)` in a fresh interpreter; its dict result plus `peak_rss_bytes`.

    The result travels as JSON through a temporary file, so the child may print what it likes.
    """
    with tempfile.TemporaryDirectory(prefix="gendl-bench-") as directory:
        result_path = Path(directory) / "result.json"
        command = [
            sys.executable,
            "-m",
            "benchmarks.harness",
            module,
            function,
            json.dumps(kwargs),
            str(result_path),
        ]
        completed = subprocess.run(
            command, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True
        )
        if completed.returncode != 0:
            tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-30:])
            raise ChildError(f"{module}.{function} exited with {completed.returncode}:\n{tail}")
        return json.loads(result_path.read_text())


def _child_main(argv: Sequence[str]) -> None:
    module, function, kwargs_json, result_path = argv
    result = getattr(importlib.import_module(module), function)(**json.loads(kwargs_json))
    result["peak_rss_bytes"] = peak_rss_bytes()
    Path(result_path).write_text(json.dumps(result))


DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")  # what --policies accepts


def parse_policies(text: str, known: Sequence[str] = DTYPE_POLICIES, allow_none: bool = False) -> list[str]:
    """--policies: comma-separated Keras dtype policies out of `known`, each once, in the order given."""
    policies = list(dict.fromkeys(policy.strip() for policy in text.split(",") if policy.strip()))
    if [policy for policy in policies if policy not in known] or not (policies or allow_none):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(known)}, got {text!r}"
        )
    return policies


def policy_goal_not_measured(record: dict[str, Any]) -> str:
    """Issue 15's goal line when its policy (this machine's default) was left out of --policies."""
    return (
        f"Goal (issue 15): {record['goal']} under {record['policy']}, this machine's default: not measured "
        f"(add {record['policy']} to --policies)."
    )


# --- Results ----------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """Where and with what the numbers were measured."""

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": version("tensorflow"),
        "keras": version("keras"),
        "numpy": version("numpy"),
    }


def write_results(path: Path, results: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def mib(num_bytes: float) -> str:
    return f"{num_bytes / MIB:,.1f} MiB"


def per_run(result: dict[str, Any], key: str, fmt: str) -> str:
    """`result[key]` (a median), then each run's value when there are several."""
    each = ", ".join(format(run[key], fmt) for run in result["runs"])
    return f"{format(result[key], fmt)} ({each})" if len(result["runs"]) > 1 else format(result[key], fmt)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers are expected already formatted as strings."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
