"""Plots as inline SVG, drawn here so a report is one self-contained HTML file with no
plotting library and nothing fetched when it opens."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
W, H, PAD_L, PAD_B, PAD_T, PAD_R = 640, 240, 56, 28, 24, 12

Series = tuple[str, Sequence[tuple[float, float | None]]]


def _fmt(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:.1f}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.3g}"


def line_chart(title: str, series: Sequence[Series], x_label: str = "s", y_label: str = "") -> str:
    pts = [(x, y) for _, s in series for x, y in s if y is not None]
    if not pts:
        return f'<figure><figcaption>{escape(title)}</figcaption><p class="empty">no data</p></figure>'
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y1 = max(max(p[1] for p in pts), 1e-9) * 1.1
    x1 = x1 if x1 > x0 else x0 + 1

    def sx(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R)

    def sy(y: float) -> float:
        return H - PAD_B - y / y1 * (H - PAD_B - PAD_T)

    parts = [f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{escape(title)}">']
    parts.append(f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" stroke="#888"/>')
    parts.append(f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}" stroke="#888"/>')
    for frac in (0.0, 0.5, 1.0):
        yv = y1 / 1.1 * frac
        parts.append(f'<text x="{PAD_L - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end" font-size="10">{_fmt(yv)}</text>')
    for xv in (x0, (x0 + x1) / 2, x1):
        parts.append(
            f'<text x="{sx(xv):.1f}" y="{H - 10}" text-anchor="middle" font-size="10">{_fmt(xv)} {x_label}</text>'
        )
    if y_label:
        parts.append(f'<text x="4" y="{PAD_T - 8}" font-size="10">{escape(y_label)}</text>')
    for i, (name, s) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s if y is not None)
        if path:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        parts.append(
            f'<text x="{PAD_L + 8 + 110 * i}" y="{PAD_T - 8}" font-size="11" fill="{colour}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(title)}</figcaption>{''.join(parts)}</figure>"


def bar_chart(title: str, bars: Sequence[tuple[str, float]]) -> str:
    if not bars:
        return f'<figure><figcaption>{escape(title)}</figcaption><p class="empty">none</p></figure>'
    top = max(v for _, v in bars) or 1.0
    row, label_w = 22, 220
    h = row * len(bars) + 8
    parts = [f'<svg viewBox="0 0 {W} {h}" width="{W}" height="{h}" role="img" aria-label="{escape(title)}">']
    for i, (name, v) in enumerate(bars):
        y = 4 + i * row
        width = (W - label_w - 60) * v / top
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" font-size="11">{escape(name)}</text>')
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{width:.1f}" height="{row - 6}" fill="{colour}"/>')
        parts.append(f'<text x="{label_w + width + 4:.1f}" y="{y + 14}" font-size="11">{_fmt(v)}</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(title)}</figcaption>{''.join(parts)}</figure>"


def cdf_chart(title: str, series: Sequence[tuple[str, Sequence[float]]], unit: str = "ms") -> str:
    """Cumulative share of values up to x: where p50/p95 sit, at a glance."""
    lines: list[Series] = []
    for name, values in series:
        ordered = sorted(values)
        n = len(ordered)
        lines.append((name, [(v, (i + 1) / n * 100) for i, v in enumerate(ordered)]))
    return line_chart(title, lines, x_label=unit, y_label="% of sessions")
