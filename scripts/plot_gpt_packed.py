#!/usr/bin/env python3
"""Draws the loss curves of a train_gpt_packed.py run (its --out .json) as an SVG.

    python scripts/plot_gpt_packed.py [--json docs/data/gpt_packed_cuda_h100.json]
                                      [--out docs/images/gpt_packed_cuda_h100.svg]

Two panels sharing the step axis: top, the flashmask and SDPA losses per step; bottom,
|loss difference| per step with its running median. Both y axes are logarithmic: the losses
fall from about 5.6 to about 0.2, and the differences span five decades. The SVG is written by
hand with the standard library only (the repo's pictures need no plotting package; see
scripts/make_mask_pictures.py).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics

REPO = pathlib.Path(__file__).resolve().parent.parent

FLASHMASK_COLOR = "#264678"   # the dark blue of the mask pictures (make_mask_pictures.VISIBLE)
SDPA_COLOR = "#d9822b"        # orange: tells the two curves apart where they do not overlap
DIFFERENCE_COLOR = "#8a94a6"  # grey points: the per-step noise
MEDIAN_COLOR = "#b03a2e"      # red line: the trend through the noise
GRID_COLOR = "#e3e6eb"
TEXT_COLOR = "#333333"

WIDTH = 760                   # pixels; fits the docs' text column at full size
PANEL_HEIGHT = 230            # each of the two panels
MARGIN_LEFT = 64              # room for the y tick labels ("1e-05") and the axis title
MARGIN_RIGHT = 16
MARGIN_TOP = 34               # room for the title
PANEL_GAP = 46                # between the panels: the top panel's legend sits above the lower one
MARGIN_BOTTOM = 44            # room for the x tick labels and the axis title
STEP_TICK = 50                # a labelled grid line every 50 steps: 6 labels for the default 300 steps
LOSS_AXIS_MARGIN_DECADES = 0.05  # space above the highest and below the lowest loss
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


def running_median(values: list, window: int) -> list:
    """Median of each centred window of `window` values (narrower at the ends)."""
    half = window // 2
    return [statistics.median(values[max(0, i - half):i + half + 1]) for i in range(len(values))]


def log_decades(low: float, high: float) -> tuple:
    """The powers of ten just enclosing [low, high]."""
    return math.floor(math.log10(low)), math.ceil(math.log10(high))


class Panel:
    """Maps (step, value) to pixels inside one panel, with a log10 y axis."""

    def __init__(self, top: float, steps: int, log_low: float, log_high: float):
        self.top = top
        self.steps = steps
        self.log_low = log_low    # log10 of the values at the bottom and the top of the panel
        self.log_high = log_high
        self.left = MARGIN_LEFT
        self.width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT

    def x(self, step: float) -> float:
        return self.left + self.width * step / max(1, self.steps - 1)

    def y(self, value: float) -> float:
        fraction = (math.log10(value) - self.log_low) / (self.log_high - self.log_low)
        return self.top + PANEL_HEIGHT * (1.0 - fraction)

    def frame(self, y_title: str, y_ticks: list, x_labels: bool) -> list:
        parts = []
        for value, label in y_ticks:
            y = self.y(value)
            parts.append(f"<line x1='{self.left}' y1='{y:.1f}' x2='{self.left + self.width}' y2='{y:.1f}' "
                         f"stroke='{GRID_COLOR}'/>")
            parts.append(f"<text x='{self.left - 6}' y='{y + 4:.1f}' text-anchor='end' font-size='11' "
                         f"fill='{TEXT_COLOR}'>{label}</text>")
        for step in range(0, self.steps, STEP_TICK):
            x = self.x(step)
            parts.append(f"<line x1='{x:.1f}' y1='{self.top}' x2='{x:.1f}' y2='{self.top + PANEL_HEIGHT}' "
                         f"stroke='{GRID_COLOR}'/>")
            if x_labels:
                parts.append(f"<text x='{x:.1f}' y='{self.top + PANEL_HEIGHT + 16}' text-anchor='middle' "
                             f"font-size='11' fill='{TEXT_COLOR}'>{step}</text>")
        parts.append(f"<rect x='{self.left}' y='{self.top}' width='{self.width}' height='{PANEL_HEIGHT}' "
                     f"fill='none' stroke='#9aa3b0'/>")
        middle = self.top + PANEL_HEIGHT / 2
        parts.append(f"<text x='14' y='{middle:.1f}' text-anchor='middle' font-size='12' fill='{TEXT_COLOR}' "
                     f"transform='rotate(-90 14 {middle:.1f})'>{y_title}</text>")
        return parts

    def polyline(self, values: list, color: str, width: float) -> str:
        points = " ".join(f"{self.x(i):.1f},{self.y(v):.1f}" for i, v in enumerate(values))
        return f"<polyline points='{points}' fill='none' stroke='{color}' stroke-width='{width}'/>"

    def dots(self, values: list, color: str) -> str:
        circles = "".join(f"<circle cx='{self.x(i):.1f}' cy='{self.y(v):.1f}' r='1.6'/>" for i, v in enumerate(values))
        return f"<g fill='{color}'>{circles}</g>"


def legend(x: float, y: float, entries: list) -> list:
    """One row of (color, label, style) entries; style 'line' or 'dot'."""
    parts = []
    for color, label, style in entries:
        if style == "line":
            parts.append(f"<line x1='{x}' y1='{y - 4}' x2='{x + 22}' y2='{y - 4}' stroke='{color}' stroke-width='2'/>")
        else:
            parts.append(f"<circle cx='{x + 11}' cy='{y - 4}' r='2.5' fill='{color}'/>")
        parts.append(f"<text x='{x + 28}' y='{y}' font-size='11' fill='{TEXT_COLOR}'>{label}</text>")
        x += 36 + 6.3 * len(label)  # approximate text width at 11 px
    return parts


def svg(run: dict, window: int) -> str:
    steps = run["steps"]
    flashmask_loss = [s["loss_flashmask"] for s in steps]
    sdpa_loss = [s["loss_sdpa"] for s in steps]
    difference = [abs(a - b) for a, b in zip(flashmask_loss, sdpa_loss)]
    smallest_nonzero = min((d for d in difference if d > 0), default=1e-7)
    # A step with equal losses cannot sit on a log axis: drawn at the panel's floor instead.
    low, high = log_decades(smallest_nonzero, max(difference))
    difference_drawn = [max(d, 10.0 ** low) for d in difference]

    # The loss axis spans the data (plus a margin), not whole decades: a whole decade below the
    # lowest loss would leave a third of the panel empty.
    loss_log_low = math.log10(min(flashmask_loss + sdpa_loss)) - LOSS_AXIS_MARGIN_DECADES
    loss_log_high = math.log10(max(flashmask_loss + sdpa_loss)) + LOSS_AXIS_MARGIN_DECADES
    loss_panel = Panel(MARGIN_TOP, len(steps), loss_log_low, loss_log_high)
    difference_panel = Panel(MARGIN_TOP + PANEL_HEIGHT + PANEL_GAP, len(steps), low, high)
    height = difference_panel.top + PANEL_HEIGHT + MARGIN_BOTTOM

    config, summary = run["config"], run["summary"]
    title = (f"train_gpt_packed.py, {summary['device_name']}, bf16: {config['steps']} steps of "
             f"{config['batch']} x {config['seq_len']} tokens")
    loss_ticks = [(multiple * 10.0 ** decade, f"{multiple * 10.0 ** decade:g}")
                  for decade in range(math.floor(loss_log_low), math.ceil(loss_log_high))
                  for multiple in (1, 2, 5)
                  if loss_log_low <= math.log10(multiple * 10.0 ** decade) <= loss_log_high]
    difference_ticks = [(10.0 ** decade, f"1e{decade:+03d}") for decade in range(low, high + 1)]

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height:.0f}' "
             f"viewBox='0 0 {WIDTH} {height:.0f}' {FONT}>",
             f"<rect width='100%' height='100%' fill='white'/>",
             f"<text x='{MARGIN_LEFT}' y='20' font-size='13' font-weight='bold' fill='{TEXT_COLOR}'>{title}</text>"]
    parts += loss_panel.frame("loss (log scale)", loss_ticks, x_labels=False)
    parts.append(loss_panel.polyline(sdpa_loss, SDPA_COLOR, 1.6))
    parts.append(loss_panel.polyline(flashmask_loss, FLASHMASK_COLOR, 1.0))
    parts += legend(MARGIN_LEFT + 8, loss_panel.top + PANEL_HEIGHT + 18,
                    [(FLASHMASK_COLOR, "flashmask_attention, causal-document mask", "line"),
                     (SDPA_COLOR, "SDPA + dense boolean mask", "line")])

    parts += difference_panel.frame("|loss difference| (log scale)", difference_ticks, x_labels=True)
    parts.append(difference_panel.dots(difference_drawn, DIFFERENCE_COLOR))
    parts.append(difference_panel.polyline(running_median(difference_drawn, window), MEDIAN_COLOR, 1.6))
    parts += legend(MARGIN_LEFT + 8, difference_panel.top + 16,
                    [(DIFFERENCE_COLOR, "|flashmask - SDPA| at each step", "dot"),
                     (MEDIAN_COLOR, f"running median over {window} steps", "line")])
    parts.append(f"<text x='{MARGIN_LEFT + (WIDTH - MARGIN_LEFT - MARGIN_RIGHT) / 2:.0f}' y='{height - 8:.0f}' "
                 f"text-anchor='middle' font-size='12' fill='{TEXT_COLOR}'>training step</text>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path, default=REPO / "docs" / "data" / "gpt_packed_cuda_h100.json",
                        help="the --out .json of examples/python/train_gpt_packed.py")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "docs" / "images" / "gpt_packed_cuda_h100.svg")
    parser.add_argument("--window", type=int, default=21, help="steps in the running median of |difference| (odd)")
    args = parser.parse_args()
    if args.window < 1 or args.window % 2 == 0:
        parser.error(f"--window must be a positive odd number of steps (centred window), got {args.window}")

    run = json.loads(args.json.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(svg(run, args.window))
    print(f"wrote {args.out} ({len(run['steps'])} steps)")


if __name__ == "__main__":
    main()
