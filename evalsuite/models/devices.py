"""Which device a run uses, what it says about it, and which CPU runs it refuses.

``--device auto`` (the default) follows the machine, as lm-eval does: CUDA when a GPU is visible
(``cuda``: GPU 0, or every visible GPU where the model needs them, see
:func:`evalsuite.models.loading.gpu_device_map`), else the CPU. A CPU default used to send the
README's ``--models solar`` onto the CPU in float32 on a GPU machine, for days.

On the CPU chosen by ``auto`` (not an explicit ``--device cpu``), a registry model whose run
cannot end within a day is refused in one line before anything is downloaded
(:func:`check_cpu_run`): the estimate needs no tokenizer or weights, only the registry's
parameter count, the documents the run evaluates and an optimistic CPU throughput, so it
refuses only runs that are surely too long (SOLAR on the full leaderboard: days; SmolLM2 or
SOLAR with ``--limit 3``: minutes to hours). ``evalsuite run --dry-run`` gives the measured
estimate. A model beyond the machine's RAM is refused by :func:`evalsuite.models.memory.check_fits`.

The GPUs are read through a :class:`DeviceReader` (torch's by default), so the decision is
tested on a CPU machine with a stand-in reader.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evalsuite.errors import EvalsuiteError

AUTO = "auto"
#: Seconds beyond which a CPU run chosen by ``auto`` is refused.
CPU_DAY_S = 24 * 3600
#: Floating point operations per second one CPU core sustains in a float32 forward: optimistic
#: (a recent server core with AVX-512 FMA), so the refusal errs on the side of running.
CORE_FLOPS = 50e9
#: Tokens the evalsuite engine forwards per document of each task (the full splits' engine
#: tokens over their documents, SmolLM2's tokenizer: docs/dry-run.md), GSM8K with its expected
#: generated tokens; and the documents of each full split (MMLU: 57 subjects).
TOKENS_PER_DOC = {"arc": 995, "hellaswag": 949, "mmlu": 109, "truthfulqa": 65, "winogrande": 148, "gsm8k": 1150}
FULL_DOCS = {"arc": 1172, "hellaswag": 10042, "mmlu": 14042, "truthfulqa": 817, "winogrande": 1267, "gsm8k": 1319}
MMLU_SUBJECTS = 57
#: Models below this size are never refused: SmolLM2 (and its DUS copy) are the CPU's own models,
#: slow on one core at worst, and the dry run says how slow.
MIN_REFUSED_PARAMS = 1_000_000_000


@dataclass(frozen=True)
class GpuInfo:
    """One visible GPU: its name and total memory in bytes."""

    name: str
    total_memory: int


#: Lists the visible GPUs (empty on a machine without CUDA).
DeviceReader = Callable[[], Sequence[GpuInfo]]


def torch_gpus() -> list[GpuInfo]:
    """The GPUs torch sees (none when CUDA is unavailable)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [GpuInfo(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory)
            for i in range(torch.cuda.device_count())]


def resolve_device(requested: str, reader: DeviceReader | None = None) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; any other value unchanged."""
    if requested != AUTO:
        return requested
    return "cuda" if (reader or torch_gpus)() else "cpu"


def describe_device(device: str, requested: str, reader: DeviceReader | None = None) -> str:
    """The run's first line: the device, how it was chosen, and the GPUs (names and memory)."""
    how = "auto" if requested == AUTO else "--device"
    if not device.startswith("cuda"):
        hint = "no GPU visible" if requested == AUTO else "as asked"
        return f"device cpu ({how}: {hint}; {os.cpu_count() or 1} cores)"
    gpus = list((reader or torch_gpus)())
    index = device.partition(":")[2]
    shown = [gpus[int(index)]] if index and int(index) < len(gpus) else gpus
    names: dict[str, int] = {}
    for gpu in shown:
        label = f"{gpu.name} ({gpu.total_memory / 2**30:.0f} GiB)"
        names[label] = names.get(label, 0) + 1
    listed = ", ".join(f"{count} x {label}" for label, count in names.items()) or "no GPU visible"
    return f"device {device} ({how}): {listed}"


def planned_docs(task: str, limit: int | None) -> int:
    """Documents a run of ``task`` evaluates with ``limit`` (per subject for MMLU)."""
    full = FULL_DOCS.get(task, 1000)
    if limit is None:
        return full
    return min(full, limit * MMLU_SUBJECTS) if task == "mmlu" else min(full, limit)


def cpu_seconds(params: int, tasks: Sequence[str], limit: int | None, cores: int | None = None) -> float:
    """An optimistic lower bound of a CPU run's time: 2 x params FLOPs per forwarded token."""
    tokens = sum(TOKENS_PER_DOC.get(t, 1000) * planned_docs(t, limit) for t in tasks)
    return 2.0 * params * tokens / (CORE_FLOPS * max(cores or os.cpu_count() or 1, 1))


def check_cpu_run(name: str, params: int | None, tasks: Sequence[str], limit: int | None,
                  cores: int | None = None) -> None:
    """Refuse, before any download, a model whose CPU run surely lasts beyond a day (``auto`` chose
    the CPU); an explicit ``--device cpu`` runs it anyway. Models of unknown size, or below
    :data:`MIN_REFUSED_PARAMS`, pass."""
    if not params or params < MIN_REFUSED_PARAMS:
        return
    seconds = cpu_seconds(params, tasks, limit, cores)
    if seconds > CPU_DAY_S:
        raise EvalsuiteError(
            f"{name} ({params / 1e9:.1f}B parameters) would take about {seconds / 86400:.1f} days or more on this "
            f"machine's CPU ({cores or os.cpu_count() or 1} cores; no GPU is visible): run it on a GPU machine, "
            f"pass --limit N for a short run, or --device cpu to run on the CPU anyway "
            f"(`evalsuite run --dry-run` estimates the time)")
