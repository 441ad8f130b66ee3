"""The one timing statistic of every benchmark tool: each call timed on its own, reported as the median with the
min and max beside it (the spread shows when other jobs shared the machine).

    t = time_calls(lambda: model(x), warmup=3, runs=10, device=torch.device('cpu'))
    print(t)                       # 12.34 ms (min 12.01, max 13.90, 10 runs)
    row.update(t.fields('infer_step_time'))  # infer_step_time (median ms), infer_step_time_min, _max
"""
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

__all__ = ['Timing', 'time_calls', 'CLOCKS']

# 'wall': perf_counter; 'process': this process's CPU time (steadier on a shared machine at one thread; idle
# OpenMP threads that spin would be counted at several)
CLOCKS = {'wall': time.perf_counter, 'process': time.process_time}


@dataclass(frozen=True)
class Timing:
    """Seconds per call over the timed runs: the median is the figure, min and max the spread."""
    median: float
    min: float
    max: float
    runs: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> 'Timing':
        if not seconds:
            raise ValueError('no timed runs')
        return cls(statistics.median(seconds), min(seconds), max(seconds), len(seconds))

    @property
    def ms(self) -> float:
        return self.median * 1e3

    def fields(self, name: str, scale: float = 1e3, digits: int = 3) -> Dict[str, float]:
        """{name: median, name_min: min, name_max: max}, in milliseconds by default."""
        return {name: round(self.median * scale, digits), f'{name}_min': round(self.min * scale, digits),
                f'{name}_max': round(self.max * scale, digits)}

    def __str__(self) -> str:
        return f'{self.median * 1e3:.2f} ms (min {self.min * 1e3:.2f}, max {self.max * 1e3:.2f}, {self.runs} runs)'


def _sync(device: Optional[torch.device]) -> None:
    if device is not None and device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], *, runs: int, warmup: int = 1, min_time: float = 0.0,
               device: Optional[torch.device] = None, clock: str = 'wall') -> Timing:
    """Time fn() after ``warmup`` untimed calls: at least ``runs`` calls, and more until ``min_time`` seconds of
    timed calls have passed. On a CUDA device each call is timed by CUDA events (clock is ignored); otherwise by
    ``clock`` ('wall' or 'process', see CLOCKS)."""
    if runs < 1:
        raise ValueError(f'runs must be at least 1, got {runs}')
    if clock not in CLOCKS:
        raise ValueError(f'clock must be one of {sorted(CLOCKS)}, got {clock!r}')
    device = torch.device(device) if device is not None else None
    for _ in range(warmup):
        fn()
    _sync(device)
    seconds: List[float] = []
    while len(seconds) < runs or sum(seconds) < min_time:
        if device is not None and device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            tick = CLOCKS[clock]
            t0 = tick()
            fn()
            seconds.append(tick() - t0)
    return Timing.of(seconds)
