"""The method in one picture: FGR data → FinPercep-RM → RL under the curriculum (CCL).

    python docs/method_figure.py        # writes docs/method.png (1504 × 752 px, under 200 KB)

Drawn with matplotlib alone (Agg backend, no display needed), so the figure is rebuilt from this file whenever
the method changes. Three panels, left to right, in the order the data flows: the fine-grained training data
(docs/method.md §2), the reward model and its stages (§1, §3, §5), and the RL loop it rewards (§4, §5).
"""

import os

import matplotlib

matplotlib.use("Agg")  # files only: no window, works on a headless machine
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "method.png")
W, H = 32.0, 16.0  # drawing units: the canvas is 16 × 8 in, two units per inch
DPI = 94  # 1504 × 752 px: sharp at README width, and the PNG stays under 200 KB (at 100 dpi it is 206 KB)
# One colour per panel (the edge of its boxes, the tint of its background), colour-blind-safe hues.
DATA, RM, RL, INK = "#1f77b4", "#d95f02", "#1b9e77", "#222222"

# The boxes' texts, by name: the method's symbols in matplotlib's mathtext (no LaTeX install needed).
TEXT = {
    "zoo": "SR zoo → $I_{SR}$\nupsamplers · diffusion-like artifacts\nRL artifacts · policy samples",
    "swap": "region swap\n" r"$I_{syn} = M \odot I_{SR} + (1 - M) \odot I_{GT}$",
    "label": "label function (full-reference)\n"
    r"$M_{gt} = \mathrm{Normalize}(\alpha|I_{syn} - I_{GT}| + (1-\alpha)\, d_\phi)$",
    "triplets": r"triplets $(I_{GT}, I_{syn}, I_{SR}, M_{gt})$ + gold $= 1 - \bar{M}$",
    # The score's three paths into its logit (rm.FinPercepRM.forward_all): content, gated map, statistics.
    "score": "score $S$ = σ( MLP[pool $f_N$,\npool $f_N \\odot M$]\n+ $w\\cdot$[mean $M$, smax $M$] )",
    "losses": "losses per stage\n" r"$L_{map} + L_{rank} + L_{align}$  (+ $L_{gold}$ + $L_{group}$, ours)",
    "trained": r"train $RM_0 \to \ldots \to RM_N$ (harder triplets), then freeze",
    # RL: the policy is a Gaussian per DDIM step (η > 0), so each sample has exact per-pixel log-probs.
    "policy": "policy: UNet + DDIM (η = 1)\nG samples per LR\n+ per-pixel log-probs",
    "reward": "reward: the RM stage(s) CCL picks\nscore $r_i$ + map $M_i$ per sample",
    # pg's per-pixel advantage: the group's z-score plus the map's local penalty (train_rl.pixel_advantages).
    "adv": "advantages\n$A_i$ = z-score of $r$ in the group\n"
    r"$A_i(p) = A_i + \lambda_{px} w_{map} D_i(p)$, $D$ from maps",
    "update": "update\npg: PPO clip + KL anchor, σ floor\n"
    r"ReFL: $\mathrm{relu}(c - r(\hat{x}_0)) + \lambda_{sft} L_{sft}$",
}


def panel(ax, x, w, colour, title, files):
    """A tinted background for one stage of the method, its title and the files that implement it."""
    bg = FancyBboxPatch((x, 0.5), w, 14.6, "round,pad=0,rounding_size=0.4", fc=colour, alpha=0.07, ec=colour)
    ax.add_patch(bg)
    ax.text(x + w / 2, 14.55, title, ha="center", va="center", fontsize=16, weight="bold", color=colour)
    ax.text(x + w / 2, 13.85, files, ha="center", va="center", fontsize=11, color=colour, family="monospace")


def box(ax, x, y, w, h, text, colour, size=12, fill="white"):
    """A rounded box with centred text; returns its anchor points (left, right, top, bottom middles)."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, "round,pad=0,rounding_size=0.25", fc=fill, ec=colour, lw=1.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, color=INK, linespacing=1.35)
    return {"l": (x, y + h / 2), "r": (x + w, y + h / 2), "t": (x + w / 2, y + h), "b": (x + w / 2, y)}


def arrow(ax, a, b, colour=INK, label="", rad=0.0, lx=0.0, ly=0.0):
    """An arrow a → b (curved when rad ≠ 0), with an optional small label beside its middle."""
    style = dict(arrowstyle="-|>", mutation_scale=16, color=colour, lw=1.6, shrinkA=2, shrinkB=2)
    ax.add_patch(FancyArrowPatch(a, b, connectionstyle=f"arc3,rad={rad}", **style))
    if label:  # on a white patch, so a line passing under it does not cut the words
        x, y = (a[0] + b[0]) / 2 + lx, (a[1] + b[1]) / 2 + ly
        kw = dict(fontsize=10.5, color=colour, ha="center", va="center", style="italic")
        ax.text(x, y, label, bbox=dict(fc="white", ec="none", pad=1.0), **kw)


# Vertical arrows between boxes of different widths must leave from the upper box's own bottom middle, or they
# would slant; down() keeps them vertical.
def down(ax, a, b, **kw):
    """A vertical arrow from anchor a straight down to the level of anchor b (boxes of different widths)."""
    arrow(ax, a, (a[0], b[1]), **kw)


def data_panel(ax):
    """Left: HR → degrade → LR → SR zoo → mask region swap → I_syn, labelled by the label function (§2)."""
    # Layout: the panels are 10.2 units wide with 0.5-unit margins; rows run top (y ≈ 12) to bottom (y ≈ 1).
    panel(ax, 0.4, 10.2, DATA, "1 · FGR training data", "data.py · metrics.py")
    hr = box(ax, 0.9, 11.3, 2.6, 1.5, "HR\n$I_{GT}$", DATA)
    deg = box(ax, 4.2, 11.3, 3.3, 1.5, "degrade\nblur·noise·JPEG", DATA)
    lr = box(ax, 8.2, 11.3, 1.9, 1.5, "LR", DATA)
    arrow(ax, hr["r"], deg["l"])
    arrow(ax, deg["r"], lr["l"])
    # The SR zoo stands in for "several diffusion SR models" (docs/method.md §2); its upsamplers read the LR.
    zoo = box(ax, 4.2, 8.5, 5.9, 2.0, TEXT["zoo"], DATA, size=11)
    down(ax, lr["b"], zoo["t"])
    # SLIC superpixels (the SAM stand-in) are cut from the HR crop itself, hence HR → mask.
    mask = box(ax, 0.9, 8.5, 2.6, 2.0, "mask\nellipse · brush\nSLIC", DATA, size=11)
    arrow(ax, hr["b"], mask["t"])
    swap = box(ax, 0.9, 5.5, 9.2, 2.0, TEXT["swap"], DATA, size=12.5)
    down(ax, mask["b"], swap["t"])
    down(ax, zoo["b"], swap["t"])
    # The label function is full-reference: the same function is the toy world's gold judge.
    lab = box(ax, 0.9, 2.9, 9.2, 1.9, TEXT["label"], DATA, size=12.5)
    arrow(ax, swap["b"], lab["t"])
    trip = box(ax, 0.9, 0.9, 9.2, 1.4, TEXT["triplets"], DATA, fill="#eaf2fb")
    arrow(ax, lab["b"], trip["t"])
    return trip


def rm_panel(ax, trip):
    """Middle: encoder → staged decoder RM_0 … RM_N → sigmoid map M; the score coupled to M (§1, §3, §5)."""
    panel(ax, 10.9, 10.2, RM, "2 · FinPercep-RM", "rm.py · train_rm.py")
    img = box(ax, 11.4, 11.3, 4.3, 1.5, "SR image\n(no reference)", RM)
    enc = box(ax, 11.4, 8.5, 4.3, 2.0, "encoder\nRGB + texture\n→ $f_1 \\ldots f_N$", RM, size=11.5)
    arrow(ax, img["b"], enc["t"])
    # The staged decoder: each stage adds one finer level; grow() copies every weight (exact at creation).
    stages = ["$RM_0$: no map", "$RM_1$: map 1/4", "$RM_2$: map 1/2", "$RM_N$: full res"]
    ys = [12.0, 10.75, 9.5, 8.25]
    # RM_0 (white) is a plain global IQA; the shaded stages have a map, finer at each step down.
    for i, (label, y) in enumerate(zip(stages, ys)):
        b = box(ax, 17.0, y, 3.6, 0.95, label, RM, size=11, fill="#fdf0e6" if i else "white")
        if i:
            arrow(ax, (18.8, ys[i - 1]), b["t"], colour=RM)
    note = "grow():\n+1 level,\nfunction-\npreserving"
    ax.text(20.75, 10.1, note, fontsize=9.5, color=RM, style="italic", va="center", ha="left")
    arrow(ax, enc["r"], (17.0, 9.5), label="decoder", ly=0.35)
    dmap = box(ax, 17.0, 5.5, 3.6, 1.9, "sigmoid head\n→ map $M$", RM)
    arrow(ax, (18.8, 8.25), dmap["t"])
    # The score reads the map three ways: pool(f_N), pool(f_N ⊙ M) and [mean M, smoothmax M] (rm.py).
    score = box(ax, 11.4, 5.5, 4.3, 1.9, TEXT["score"], RM, size=11)
    arrow(ax, enc["b"], score["t"])
    arrow(ax, dmap["l"], score["r"], colour=RM, label="coupled", ly=0.4)
    loss = box(ax, 11.4, 2.9, 9.2, 1.9, TEXT["losses"], RM)
    down(ax, score["b"], loss["t"])
    down(ax, dmap["b"], loss["t"])
    # Stage by stage from the shipped base (train_rm.main); curriculum.rm_difficulty: harder triplets.
    out = box(ax, 11.4, 0.9, 9.2, 1.4, TEXT["trained"], RM, fill="#fdf0e6")
    arrow(ax, loss["b"], out["t"])
    arrow(ax, trip["r"], loss["l"], colour=DATA, rad=0.25)  # the triplets train every stage
    return (20.6, ys[0] + 0.475)  # the stage stack's top right: where the frozen stages leave for RL


def rl_panel(ax, stages):
    """Right: policy → G samples → RM score + map → group and per-pixel advantages → PPO / ReFL (§4, §5)."""
    x0, w = 21.4, 10.2
    # The boxes start 1.1 units in, leaving the left margin for the loop arrow back to the policy.
    panel(ax, x0, w, RL, "3 · RL under CCL", "train_rl.py · curriculum.py")
    # CCL's schedule as a bar over the run: shares 2 : 1 : 1 : 1 (curriculum.Schedule), blended at switches.
    bx, bw, by = x0 + 1.1, w - 1.6, 12.25
    left = bx
    for k, (f, c) in enumerate(zip([0.4, 0.2, 0.2, 0.2], ["#d3efe6", "#a6dfcd", "#6fc7ab", "#36a985"])):
        ax.add_patch(Rectangle((left, by), f * bw, 0.9, fc=c, ec="white", lw=1.5))
        name = f"$RM_{k if k < 3 else 'N'}$"
        ax.text(left + f * bw / 2, by + 0.45, name, ha="center", va="center", fontsize=12)
        left += f * bw
    ax.text(bx, by - 0.35, "CCL: RL step 0 →", fontsize=10.5, color=RL, va="center")
    ax.text(bx + bw, by - 0.35, "→ T, blended at switches", fontsize=10.5, color=RL, va="center", ha="right")
    arrow(ax, stages, (bx, by + 0.45), colour=RM)  # the frozen stages are what CCL chooses among
    # The policy box leaves room on its right for CCL's arrow down to the reward.
    pol = box(ax, bx, 9.3, bw - 2.3, 2.0, TEXT["policy"], RL)
    rew = box(ax, bx, 6.6, bw, 1.8, TEXT["reward"], RL)
    down(ax, pol["b"], rew["t"])
    down(ax, (bx + bw - 1.1, by - 0.65), rew["t"], colour=RL, label="stage,\nweight", ly=0.2)
    adv = box(ax, bx, 3.6, bw, 2.2, TEXT["adv"], RL)
    arrow(ax, rew["b"], adv["t"])
    # The two algorithms share everything above; they differ only in how the reward becomes a gradient.
    upd = box(ax, bx, 0.9, bw, 2.0, TEXT["update"], RL)
    arrow(ax, adv["b"], upd["t"])
    # The loop, along the panel's left margin: the updated policy samples the next step's rollout.
    arrow(ax, upd["l"], pol["l"], colour=RL, rad=-0.12)
    kw = dict(fontsize=10.5, color=RL, style="italic", rotation=90, va="center", ha="center")
    ax.text(x0 + 0.6, 6.1, "next step", bbox=dict(fc="white", ec="none", pad=1.0), **kw)


def main():
    """Draw the three panels on one canvas and save it as docs/method.png."""
    # Every size above is in drawing units or points, so changing DPI rescales the PNG without moving a thing.
    fig = plt.figure(figsize=(W / 2, H / 2), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))  # the whole canvas, in drawing units
    ax.set_xlim(0, W)
    ax.set_ylim(0, H)
    ax.axis("off")
    rl_panel(ax, rm_panel(ax, data_panel(ax)))  # left to right: each panel hands the next its anchor
    fig.savefig(OUT, dpi=DPI, facecolor="white", pil_kwargs={"optimize": True})  # optimize: a smaller file
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
