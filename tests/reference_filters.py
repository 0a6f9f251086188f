"""Plain per-pixel transcriptions of DESIGN.md §3, written for clarity, not speed.

``c9-code`` here is DESIGN's literal reading (255 is a value that agrees and votes); the published
scripts themselves are transcribed in tests/c9_published_scripts.py.

The vectorized engine in `pipeline.method.filters` is tested against these on random stacks (hypothesis),
and the benchmark compares their speed. Each function works on Python lists for one pixel's series,
or on nested lists for one year's image.
"""
from __future__ import annotations

from collections import deque

N = 255  # not observed


def gap_fill_series(series: list[int], mode: str, backfill_limit: int = 3, c9_from: int = 32) -> tuple[list[int], list[int]]:
    """One pixel's series → (filled series, origin index per year, 255 = none)."""
    n = len(series)
    out = list(series)
    origin = [i if v != N else 255 for i, v in enumerate(series)]
    if mode == "appendix":
        for i in range(n):
            if series[i] != N:
                continue
            later = [j for j in range(i + 1, n) if series[j] != N]
            if later:
                out[i], origin[i] = series[later[0]], later[0]
                continue
            earlier = [j for j in range(i - 1, -1, -1) if series[j] != N]
            if earlier and i - earlier[0] <= backfill_limit:
                out[i], origin[i] = series[earlier[0]], earlier[0]
        return out, origin
    for i in range(n - 1):
        if series[i] != N:
            continue
        later = [j for j in range(i + 1, n - 1) if series[j] != N]
        if later:
            out[i], origin[i] = series[later[0]], later[0]
    for i in range(n - 1):  # the last year is neither filled nor a source here
        if i < c9_from or out[i] != N:
            continue
        for back in range(1, backfill_limit + 1):
            if i - back >= 0 and out[i - back] != N:
                out[i], origin[i] = out[i - back], origin[i - back]
                break
    return out, origin


def temporal_series(series: list[int], mode: str) -> list[int]:
    """One pixel's series after the temporal filter."""
    y = list(series)
    n = len(y)
    if mode == "appendix":
        for t in range(1, n - 1):
            if y[t - 1] == y[t + 1] and y[t - 1] != N and y[t] != N and y[t] != y[t - 1]:
                y[t] = y[t - 1]
        return y
    frozen = list(y)
    for t in range(1, n - 1):
        if frozen[t] == N:
            y[t] = frozen[t - 1] if frozen[t - 1] != N else frozen[t + 1]
        if frozen[t - 1] == frozen[t + 1]:  # 255 is a value: two not-observed years agree
            y[t] = frozen[t - 1]
    frozen = list(y)
    for t in range(1, n - 1):
        if frozen[t + 1] == N:
            y[t + 1] = frozen[t] if frozen[t] != N else frozen[t - 1]
        if frozen[t - 1] == frozen[t]:
            y[t + 1] = frozen[t - 1]
    return y


def component_sizes(image: list[list[int]]) -> list[list[int]]:
    """Size of the 8-connected mining component of each mining pixel (0 elsewhere), by breadth-first search."""
    rows, cols = len(image), len(image[0])
    size = [[0] * cols for _ in range(rows)]
    seen = [[False] * cols for _ in range(rows)]
    for r in range(rows):
        for c in range(cols):
            if image[r][c] != 1 or seen[r][c]:
                continue
            members, queue = [], deque([(r, c)])
            seen[r][c] = True
            while queue:
                i, j = queue.popleft()
                members.append((i, j))
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        a, b = i + di, j + dj
                        if 0 <= a < rows and 0 <= b < cols and not seen[a][b] and image[a][b] == 1:
                            seen[a][b] = True
                            queue.append((a, b))
            for i, j in members:
                size[i][j] = len(members)
    return size


def spatial_image(image: list[list[int]], mode: str, min_size: int = 10, window: int = 3) -> list[list[int]]:
    """One year's image after the spatial filter."""
    rows, cols = len(image), len(image[0])
    size = component_sizes(image)
    out = [list(row) for row in image]
    h = window // 2
    for r in range(rows):
        for c in range(cols):
            if image[r][c] != 1 or size[r][c] >= min_size:
                continue
            if mode == "appendix":
                out[r][c] = 0
                continue
            counts = {0: 0, 1: 0, N: 0}  # not observed votes too; outside the raster does not
            for i in range(r - h, r + h + 1):
                for j in range(c - h, c + h + 1):
                    if 0 <= i < rows and 0 <= j < cols:
                        counts[image[i][j]] += 1
            out[r][c] = max(sorted(counts), key=lambda v: (counts[v], -v))  # ties to the smaller value
    return out


def frequency_series(series: list[int], mode: str, cut: float = 10.0) -> list[int]:
    """One pixel's series after the frequency filter."""
    n = len(series)
    c = sum(1 for v in series if v == 1)
    if mode == "appendix":
        rare = c > 0 and c / n < cut / 100
    else:
        rare = n > 1 and c > 0 and c * 100 / (n - 1) <= cut
    return [0 if (rare and v == 1) else v for v in series]


def chain(stack: list[list[list[int]]], mode: str, min_size: int = 10, window: int = 3,
          backfill_limit: int = 3, cut: float = 10.0, c9_from: int = 32) -> list[list[list[int]]]:
    """The whole chain on a nested-list stack [year][row][col], one pixel or one year at a time."""
    years, rows, cols = len(stack), len(stack[0]), len(stack[0][0])
    out = [[[0] * cols for _ in range(rows)] for _ in range(years)]
    for r in range(rows):
        for c in range(cols):
            series = [stack[t][r][c] for t in range(years)]
            series = temporal_series(gap_fill_series(series, mode, backfill_limit, c9_from)[0], mode)
            for t in range(years):
                out[t][r][c] = series[t]
    out = [spatial_image(out[t], mode, min_size, window) for t in range(years)]
    for r in range(rows):
        for c in range(cols):
            series = frequency_series([out[t][r][c] for t in range(years)], mode, cut)
            for t in range(years):
                out[t][r][c] = series[t]
    return out
