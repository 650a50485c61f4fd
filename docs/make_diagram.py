"""Draw ``_static/partial_personalization.png``: the shared/personal split of one round.

Run from anywhere (``python docs/make_diagram.py``); the PNG is committed so the build does not
depend on it. Matplotlib only.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parent / "_static" / "partial_personalization.png"
SHARED, PERSONAL = "#4C72B0", "#DD8452"


def box(ax, x, y, w, h, color, text, size=10):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="black", alpha=0.9))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", color="white", fontsize=size)


def arrow(ax, start, end, text=None, offset=(0.0, 0.0)):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="black", lw=1.2))
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text, fontsize=8,
                ha="center", va="center")


def draw(path: Path = OUT) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.4, 5.4)
    ax.axis("off")
    box(ax, 3.6, 4.3, 2.8, 0.8, SHARED, "server: shared u\n(weighted average)")
    for i, x in enumerate((0.4, 3.7, 7.0)):
        ax.add_patch(FancyBboxPatch((x, 0.3), 2.6, 2.6, boxstyle="round,pad=0.05", fc="#f2f2f2", ec="grey"))
        ax.text(x + 1.3, 2.7, f"client {i + 1}" if i < 2 else "client n", ha="center", fontsize=9)
        box(ax, x + 0.2, 1.55, 2.2, 0.8, SHARED, "shared u\n(e.g. body)", size=8)
        box(ax, x + 0.2, 0.5, 2.2, 0.8, PERSONAL, f"personal v{i + 1 if i < 2 else 'n'}\n(e.g. head)", size=8)
        arrow(ax, (5.0 - 0.3 + 0.15 * i, 4.25), (x + 1.3 - 0.2, 2.95), "u" if i == 0 else None, (-0.3, 0))
        arrow(ax, (x + 1.3 + 0.2, 2.95), (5.0 + 0.15 * i, 4.25), "u_i" if i == 2 else None, (0.3, 0))
    ax.text(5.0, -0.2, "only u travels; each v_i stays on its client", ha="center", fontsize=9, style="italic")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(draw())
