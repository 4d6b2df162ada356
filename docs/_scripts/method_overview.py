"""Draw the SpaCRD overview figure used on the method page.

Run from the repository root::

    python docs/_scripts/method_overview.py

It writes ``docs/_static/method_overview.png``. The boxes and arrows restate the three training stages of
``docs/method.md``; the sizes, the default image backbone, the number of classifier heads and the call
are read from the package's defaults, so the figure follows them. Nothing is read from data.
"""

import inspect
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib import pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from spacrd.model import SpaCRD
from spacrd.module import SpaCRDModule
from spacrd.pp import image_features

OUT = Path(__file__).resolve().parents[1] / "_static" / "method_overview.png"


def defaults(func) -> dict:
    """Default values of ``func``'s keyword arguments."""
    return {
        name: p.default for name, p in inspect.signature(func).parameters.items() if p.default is not p.empty
    }


MODULE = defaults(SpaCRDModule.__init__)
PREDICT = defaults(SpaCRD.predict)
BACKBONE = defaults(image_features)["backbone"]


def encoder_text(what: str) -> str:
    """ "gene\nencoder\n(linear → 64)" for the default module, an MLP's layer widths otherwise."""
    widths = " → ".join(str(w) for w in (*MODULE["n_hidden"], MODULE["n_embed"]))
    kind = "MLP" if MODULE["n_hidden"] else "linear"
    return f"{what}\nencoder\n({kind} → {widths})"


def output_text() -> str:
    call = "Bayes call" if PREDICT["threshold"] is None else f"{PREDICT['threshold']} call"
    return f"P(cancer),\nmean of {MODULE['n_members']}\nheads; their\nspread;\nlabel-free\n{call}"


# Colours by role: inputs, stage I, stage II, stage III (colour-blind-safe Okabe–Ito hues, lightened).
INPUT, STAGE1, STAGE2, STAGE3 = "#e8e8e8", "#cfe3f3", "#fde3c2", "#d5eedd"
EDGE = "#404040"


def box(ax, x, y, w, h, text, color, fontsize=8.5, weight="normal"):
    patch = FancyBboxPatch(
        (x, y),
        w,
        h,
        boxstyle="round,pad=0.02,rounding_size=0.08",
        facecolor=color,
        edgecolor=EDGE,
        linewidth=0.9,
    )
    ax.add_patch(patch)
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, weight=weight, wrap=True)
    return (x, y, w, h)


def arrow(ax, start, end, text=None, style="-|>", color=EDGE, rad=0.0, offset=(0.0, 0.12)):
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=11,
            linewidth=1.0,
            color=color,
            connectionstyle=f"arc3,rad={rad}",
            shrinkA=2,
            shrinkB=2,
        )
    )
    if text:
        ax.text(
            (start[0] + end[0]) / 2 + offset[0],
            (start[1] + end[1]) / 2 + offset[1],
            text,
            ha="center",
            va="bottom",
            fontsize=7.5,
            style="italic",
            color="#303030",
        )


def right(b):
    return (b[0] + b[2], b[1] + b[3] / 2)


def left(b):
    return (b[0], b[1] + b[3] / 2)


def top(b):
    return (b[0] + b[2] / 2, b[1] + b[3])


def bottom(b):
    return (b[0] + b[2] / 2, b[1])


def stage_band(ax, x, w, label, color):
    ax.add_patch(
        FancyBboxPatch(
            (x, 0.25),
            w,
            6.2,
            boxstyle="round,pad=0.02,rounding_size=0.15",
            facecolor=color,
            edgecolor="none",
            alpha=0.35,
            zorder=0,
        )
    )
    ax.text(x + w / 2, 6.2, label, ha="center", va="center", fontsize=10, weight="bold")


def main() -> None:
    fig, ax = plt.subplots(figsize=(13.5, 5.6))
    ax.set_xlim(0, 17.1)
    ax.set_ylim(0, 6.6)
    ax.axis("off")

    stage_band(ax, 3.05, 3.65, "Stage I: modality alignment", STAGE1)
    stage_band(ax, 6.95, 5.9, "Stage II: cross-attention fusion + VAE", STAGE2)
    stage_band(ax, 13.05, 3.9, "Stage III: cancer likelihood", STAGE3)

    # Inputs: each spot with its k = 7 nearest spots of the same section.
    he = box(
        ax,
        0.2,
        3.6,
        2.5,
        1.5,
        f"H&E crop per spot\n(one spot diameter)\n→ {BACKBONE}\nfeatures",
        INPUT,
    )
    st = box(
        ax, 0.2, 1.1, 2.5, 1.5, "gene counts per spot\n→ normalise, log1p,\nHVGs, per-section\nscaling", INPUT
    )
    ax.text(
        1.45, 0.55, "each spot + its 6 nearest\nspots (k = 7 tokens)", ha="center", va="center", fontsize=7.5
    )

    # Stage I: two MLP encoders and a CLIP-style loss between them.
    enc_img = box(ax, 3.3, 3.75, 1.5, 1.2, encoder_text("image"), STAGE1)
    enc_gene = box(ax, 3.3, 1.25, 1.5, 1.2, encoder_text("gene"), STAGE1)
    box(ax, 5.1, 2.55, 1.4, 1.3, f"symmetric\nInfoNCE\nτ = {MODULE['temperature']}", STAGE1, fontsize=8)
    arrow(ax, right(he), left(enc_img))
    arrow(ax, right(st), left(enc_gene))
    arrow(ax, (4.3, 3.75), (5.1, 3.45), rad=0.25)
    arrow(ax, (4.3, 2.45), (5.1, 2.95), rad=-0.25)

    # Stage II: bidirectional cross-attention, fused embedding, class-prior VAE.
    gene_guided = box(
        ax, 7.15, 3.75, 2.0, 1.2, "gene-guided\ncross-attention\nQ: gene  K/V: image", STAGE2, fontsize=7.8
    )
    he_guided = box(
        ax, 7.15, 1.25, 2.0, 1.2, "H&E-guided\ncross-attention\nQ: image  K/V: gene", STAGE2, fontsize=7.8
    )
    fused = box(
        ax,
        9.45,
        2.5,
        1.35,
        1.4,
        f"centre tokens\nconcat → MLP\n→ h* ({MODULE['n_embed']})",
        STAGE2,
        fontsize=7.8,
    )
    vae = box(
        ax,
        11.05,
        2.3,
        1.6,
        1.8,
        f"VAE on h*\nlatent z ({MODULE['n_latent']})\nprior N(μ_y, I)\nper class",
        STAGE2,
        fontsize=7.8,
    )
    # Image tokens feed both blocks (as query and as key/value), and so do gene tokens.
    arrow(ax, right(enc_img), (7.15, 4.35), "fine-tuned encoders", offset=(0.0, 0.12))
    arrow(ax, right(enc_gene), (7.15, 1.85))
    arrow(ax, (6.7, 4.35), (7.15, 2.15), color="#7a7a7a")
    arrow(ax, (6.7, 1.85), (7.15, 4.05), color="#7a7a7a")
    arrow(ax, right(gene_guided), (9.45, 3.6), rad=-0.15)
    arrow(ax, right(he_guided), (9.45, 2.8), rad=0.15)
    arrow(ax, right(fused), left(vae))
    ax.text(
        11.85, 1.5, "L_fused = ‖h_rec − h*‖²\n+ β·KL(q ‖ N(μ_y, I))", ha="center", va="center", fontsize=7.8
    )

    # Stage III: classifier on the posterior.
    clf = box(
        ax,
        13.3,
        2.3,
        1.55,
        1.8,
        "classifier\non (μ, σ)"
        + ("\n+ linear term\non neighbour-\nhood expression" if MODULE["wide"] else "\n→ sigmoid"),
        STAGE3,
        fontsize=7.8,
    )
    out = box(ax, 15.2, 2.3, 1.6, 1.8, output_text(), STAGE3, fontsize=7.8, weight="bold")
    arrow(ax, right(vae), left(clf), "(μ, σ)", offset=(0.0, 0.05))
    arrow(ax, right(clf), left(out))
    ax.text(14.1, 1.5, "L_cls = BCE + γ·L_fused", ha="center", va="center", fontsize=7.8)
    ax.text(
        15.0,
        0.7,
        "trained on labelled source sections;\napplied to new sections without labels",
        ha="center",
        va="center",
        fontsize=7.5,
    )

    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=150, bbox_inches="tight", facecolor="white")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
