"""Cost–quality curves of a router and the routing field's metrics on them.

A router with a trade-off knob (``cost_aware``'s quality floor, ``learned``'s cost weight) traces points
``(cost per request, quality)``. Any two operating points can be mixed at random, so what the router can
reach is the **non-decreasing convex hull** of its points: the upper concave envelope of the Pareto front,
flat to the right of its best point (more budget never hurts), undefined (0) left of its cheapest point.

- ``aiq``: RouterBench's Average Improvement in Quality — the area under that hull over a cost range
  (default: cheapest to dearest single candidate), divided by the range's width.
- ``apgr``: RouteLLM's Average Performance Gap Recovered between a weak (cheap) and a strong candidate:
  the mean over costs ``c`` in ``[c_weak, c_strong]`` of ``(hull(c) - q_weak) / (q_strong - q_weak)``.
  With only those two candidates the cost is linear in the share of calls sent to the strong one, so this
  is RouteLLM's average over call shares; with more candidates it is the same average over cost.
- ``cost_at_quality`` / ``quality_at_cost``: reading the hull at a quality or a budget.
- ``cost_saved``: ``1 - cost_at_quality(share x q_best) / c_best`` (e.g. share 0.95 of the best single).
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]  # (cost per request, quality)


def hull(points: Sequence[Point]) -> list[Point]:
    """Vertices of the non-decreasing convex hull, by increasing cost."""
    front: list[Point] = []
    for cost, quality in sorted((float(c), float(q)) for c, q in points):
        if front and cost == front[-1][0]:
            if quality > front[-1][1]:
                front[-1] = (cost, quality)
            continue
        if not front or quality > front[-1][1]:
            front.append((cost, quality))
    upper: list[Point] = []
    for point in front:  # monotone chain: drop vertices under the chord of their neighbours
        while len(upper) >= 2 and _cross(upper[-2], upper[-1], point) >= 0:
            upper.pop()
        upper.append(point)
    return upper


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def quality_at_cost(points: Sequence[Point], cost: float) -> float:
    """The best quality the hull reaches at ``cost`` (0 below the router's cheapest point)."""
    vertices = hull(points)
    if not vertices or cost < vertices[0][0]:
        return 0.0
    for (c0, q0), (c1, q1) in zip(vertices, vertices[1:]):
        if c0 <= cost <= c1:
            return q0 + (q1 - q0) * (cost - c0) / (c1 - c0)
    return vertices[-1][1]


def cost_at_quality(points: Sequence[Point], quality: float) -> float | None:
    """The lowest cost at which the hull reaches ``quality``; ``None`` if it never does."""
    vertices = hull(points)
    if not vertices or quality > vertices[-1][1]:
        return None
    if quality <= vertices[0][1]:
        return vertices[0][0]
    for (c0, q0), (c1, q1) in zip(vertices, vertices[1:]):
        if q0 <= quality <= q1:
            return c0 + (c1 - c0) * (quality - q0) / (q1 - q0)
    return vertices[-1][0]  # pragma: no cover - unreachable: quality is within the hull's range


def area(points: Sequence[Point], lo: float, hi: float) -> float:
    """The integral of the hull from ``lo`` to ``hi`` (exact: the hull is piecewise linear)."""
    vertices = hull(points)
    if not vertices or hi <= lo:
        return 0.0
    start = max(lo, vertices[0][0])
    if start >= hi:
        return 0.0
    xs = sorted({start, hi, *(c for c, _ in vertices if start < c < hi)})
    ys = [quality_at_cost(vertices, x) for x in xs]
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))


def aiq(points: Sequence[Point], lo: float, hi: float) -> float:
    """RouterBench's AIQ: mean hull quality over the cost range ``[lo, hi]``."""
    if hi <= lo:
        return quality_at_cost(points, hi)
    return area(points, lo, hi) / (hi - lo)


def apgr(points: Sequence[Point], weak: Point, strong: Point) -> float | None:
    """RouteLLM's APGR between ``weak`` and ``strong`` (``None`` unless strong is dearer and better)."""
    (c_weak, q_weak), (c_strong, q_strong) = weak, strong
    if c_strong <= c_weak or q_strong <= q_weak:
        return None
    return (aiq(points, c_weak, c_strong) - q_weak) / (q_strong - q_weak)


def cost_saved(points: Sequence[Point], best: Point, share: float = 0.95) -> float | None:
    """Share of the best single candidate's cost saved at ``share`` of its quality (``None``: not reached)."""
    cost = cost_at_quality(points, share * best[1])
    if cost is None or best[0] <= 0:
        return None
    return 1.0 - cost / best[0]
