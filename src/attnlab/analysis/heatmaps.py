"""Heatmaps of the attention of one sentence: a layer x head grid per attention kind."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from attnlab.model.transformer import ATTENTION_KINDS, Transformer  # noqa: E402


@torch.no_grad()
def attention_heatmaps(model: Transformer, src: torch.Tensor, tgt_in: torch.Tensor, src_tokens: list[str],
                       tgt_tokens: list[str], out_dir: Path, name: str) -> list[Path]:
    """src, tgt_in: (1, S), (1, T) without padding. Writes <out_dir>/<name>_<kind>.png."""
    was_training = model.training
    model.eval()
    _, weights = model(src, tgt_in, return_attention=True)
    model.train(was_training)
    labels = {"encoder_self": (src_tokens, src_tokens), "decoder_self": (tgt_tokens, tgt_tokens),
              "cross": (tgt_tokens, src_tokens)}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in ATTENTION_KINDS:
        layers = weights[kind]
        n_layers, n_heads = len(layers), layers[0].size(1)
        fig, axes = plt.subplots(n_layers, n_heads, figsize=(2.2 * n_heads, 2.2 * n_layers), squeeze=False)
        queries, keys = labels[kind]
        for layer in range(n_layers):
            for head in range(n_heads):
                ax = axes[layer][head]
                ax.imshow(layers[layer][0, head].float().cpu().numpy(), vmin=0, vmax=1, cmap="viridis")
                ax.set_xticks([])
                ax.set_yticks([])
                if layer == 0:
                    ax.set_title(f"head {head}", fontsize=8)
                if head == 0:
                    ax.set_ylabel(f"layer {layer}", fontsize=8)
        fig.suptitle(f"{kind}: {' '.join(queries)[:60]} <- {' '.join(keys)[:60]}", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}_{kind}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths
