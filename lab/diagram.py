"""A picture of the idea: one residual sub-layer i drawn four ways, side by side.

    python -m lab.diagram                          # writes lab/figures/sublayers.png
    python -m lab.diagram --out sublayers.png

Each panel reads bottom to top: x_{i-1} comes in and splits into the branch f_i (self-attention or
feed-forward) and the shortcut; the two meet at ⊕, and x_i leaves. The four differ only in where the
LayerNorm sits and what multiplies the shortcut, and that is the whole lesson:

    Post-LN   x_i = LN(x_{i-1} + f_i(x_{i-1}))          the norm after the add
    Pre-LN    x_i = x_{i-1} + f_i(LN(x_{i-1}))          the norm inside the branch, the shortcut untouched
    Admin     x_i = LN(ω_i ⊙ x_{i-1} + f_i(x_{i-1}))    Post-LN, the shortcut times ω_i (set, trained)
    DeepNorm  x_i = LN(α x_{i-1} + f_i(x_{i-1}))        Post-LN, the shortcut times a fixed α = (2N)^(1/4);
              the branch's V, O and FFN weights start times β_DN = (8N)^(-1/4) (DeepNet's β)

The equation under each panel is its string in PANELS, as admin.py writes it (a test finds each one
there). Stands on cli.py; matplotlib is optional, and without it --out is exit 2 saying how to get it.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

from lab import cli


class Panel(NamedTuple):
    name: str
    source: str
    equation: str  # as admin.py writes it, drawn through math()
    note: str  # may hold mathtext
    pre_ln: bool  # the LN inside the branch (Pre-LN), not after the add (Post-LN)
    shortcut_scale: str | None = None  # the multiplier node on the shortcut
    weight_scale: str | None = None  # a scale on the branch's initial weights


PANELS = [
    Panel("Post-LN", "vanilla: the original Transformer", "x_i = LN(x_{i-1} + f_i(x_{i-1}))",
          "the norm after the add", pre_ln=False),
    Panel("Pre-LN", "the common alternative", "x_i = x_{i-1} + f_i(LN(x_{i-1}))",
          "the norm inside the branch, the shortcut\nuntouched; one more LN ends the stack", pre_ln=True),
    Panel("Admin", "Liu et al., 2020", "x_i = LN(ω_i ⊙ x_{i-1} + f_i(x_{i-1}))",
          "Post-LN, the shortcut times a vector\n" r"$\omega_i$, set at initialization, then trained",
          pre_ln=False, shortcut_scale="⊙ ω_i"),
    Panel("DeepNorm", "Wang et al., 2022 (DeepNet)", "x_i = LN(α x_{i-1} + f_i(x_{i-1}))",
          r"Post-LN, a fixed $\alpha = (2N)^{1/4}$ for $N$ layers;" "\n"
          r"V, O, FFN weights start $\times\,\beta_\mathrm{DN} = (8N)^{-1/4}$",
          pre_ln=False, shortcut_scale="× α", weight_scale="weights\n× β_DN"),
]
COLOURS = {"f": "#cfe2f3", "LN": "#fff2b3", "scale": "#f9cb9c", "shortcut": "#666666"}
W = 3.9  # panel width in data units (x and y share one scale, INCH inches a unit)
INCH = 0.72
Y = dict(inp=0.0, split=0.55, pre_ln=1.4, f=2.55, add=3.7, post_ln=4.65, out=5.6)  # heights
R = 0.22  # radius of ⊕
MATHTEXT = [("ω", r"\omega"), ("⊙", r"\odot"), ("α ", r"\alpha\,"), ("α", r"\alpha"),
            ("β_DN", r"\beta_\mathrm{DN}"), ("LN", r"\mathrm{LN}")]


def math(text: str) -> str:
    """admin.py's plain notation as mathtext, line by line: 'ω_i ⊙ x' → '$\\omega_i \\odot x$'."""
    for plain, tex in MATHTEXT:
        text = text.replace(plain, tex)
    return "\n".join(f"${line}$" if any(c in line for c in "\\_") else line for line in text.split("\n"))


def box(ax, x: float, y: float, label: str, colour: str, w: float = 1.5, h: float = 0.62, size: float = 12):
    from matplotlib.patches import FancyBboxPatch  # here, not on top: matplotlib is optional

    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.1",
                                facecolor=colour, edgecolor="black", lw=1.2, zorder=2))
    ax.text(x, y, label, ha="center", va="center", fontsize=size, zorder=3)


def arrow(ax, start: tuple, end: tuple, colour: str = "black") -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.4,
                                                          shrinkA=0, shrinkB=0, mutation_scale=14))


def branch(ax, c: float, p: Panel) -> None:
    """Up the middle (x = c): x_{i-1} → (LN →) f_i → ⊕ → (LN →) x_i."""
    from matplotlib.patches import Circle

    ax.text(c, Y["inp"], math("x_{i-1}"), ha="center", va="center", fontsize=13)
    ax.plot([c, c], [Y["inp"] + 0.22, Y["split"]], color="black", lw=1.4)
    ax.plot([c], [Y["split"]], "o", color="black", ms=4)
    if p.pre_ln:  # Pre-LN: the norm inside the branch
        arrow(ax, (c, Y["split"]), (c, Y["pre_ln"] - 0.31))
        box(ax, c, Y["pre_ln"], "LN", COLOURS["LN"])
    arrow(ax, (c, Y["pre_ln"] + 0.31 if p.pre_ln else Y["split"]), (c, Y["f"] - 0.36))
    box(ax, c, Y["f"], "", COLOURS["f"], h=0.72)
    ax.text(c, Y["f"] + 0.13, math("f_i"), ha="center", va="center", fontsize=14, zorder=3)
    ax.text(c, Y["f"] - 0.2, "attention or FFN", ha="center", va="center", fontsize=8.5, zorder=3)
    if p.weight_scale:
        box(ax, c - 1.25, Y["f"], math(p.weight_scale), COLOURS["scale"], w=0.8, h=0.5, size=9)
    arrow(ax, (c, Y["f"] + 0.36), (c, Y["add"] - R))
    ax.add_patch(Circle((c, Y["add"]), R, facecolor="white", edgecolor="black", lw=1.2, zorder=2))
    ax.text(c, Y["add"], "+", ha="center", va="center", fontsize=15, zorder=3)
    if not p.pre_ln:  # Post-LN: the norm after the add
        arrow(ax, (c, Y["add"] + R), (c, Y["post_ln"] - 0.31))
        box(ax, c, Y["post_ln"], "LN", COLOURS["LN"])
    arrow(ax, (c, Y["add"] + R if p.pre_ln else Y["post_ln"] + 0.31), (c, Y["out"] - 0.2))
    ax.text(c, Y["out"] + 0.05, math("x_i"), ha="center", va="center", fontsize=13)


def shortcut(ax, c: float, s: float, p: Panel) -> None:
    """From the split at x = c right to x = s, up through its multiplier, left into ⊕."""
    grey, middle = COLOURS["shortcut"], (Y["split"] + Y["add"]) / 2
    ax.plot([c, s, s], [Y["split"], Y["split"], Y["add"]], color=grey, lw=1.4)
    arrow(ax, (s, Y["add"]), (c + R, Y["add"]), grey)
    ax.text(s + 0.1, middle - 0.95, "shortcut", rotation=90, ha="left", va="center", fontsize=9,
            color=grey, style="italic")
    if p.shortcut_scale:
        box(ax, s, middle, math(p.shortcut_scale), COLOURS["scale"], w=0.8, h=0.5, size=12)


def labels(ax, x: float, p: Panel) -> None:
    """Name and source above the panel centred at x; its equation and a note under it."""
    grey = COLOURS["shortcut"]
    ax.text(x, Y["out"] + 1.0, p.name, ha="center", va="center", fontsize=13, weight="bold")
    ax.text(x, Y["out"] + 0.6, p.source, ha="center", va="center", fontsize=9.5, color=grey)
    ax.text(x, Y["inp"] - 0.65, math(p.equation), ha="center", va="center", fontsize=12)
    ax.text(x, Y["inp"] - 1.35, p.note, ha="center", va="center", fontsize=9, color=grey)


def draw():
    """The figure: the four panels of PANELS, left to right."""
    plt = cli.pyplot()
    (left, right), (bottom, top) = (0, len(PANELS) * W), (Y["inp"] - 1.95, Y["out"] + 1.3)
    fig = plt.figure(figsize=(INCH * (right - left), INCH * (top - bottom)))
    ax = fig.add_axes((0, 0, 1, 1), xlim=(left, right), ylim=(bottom, top))  # one unit = INCH both ways
    ax.axis("off")
    for k, p in enumerate(PANELS):  # panel k spans x = kW … (k + 1)W
        branch(ax, k * W + 1.75, p)
        shortcut(ax, k * W + 1.75, k * W + 3.2, p)
        labels(ax, k * W + W / 2, p)
    return fig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Draw Post-LN, Pre-LN, Admin and DeepNorm residual "
                                "sub-layers side by side as block diagrams (needs matplotlib).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", metavar="PATH", default="lab/figures/sublayers.png", help="where the PNG goes")
    args = p.parse_args(argv)
    cli.check_outputs(p, {"--out": args.out}, plots=("--out",))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fig = draw()
    fig.savefig(args.out, dpi=150)
    cli.pyplot().close(fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
