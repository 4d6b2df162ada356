"""Building blocks of the SpaCRD network: per-spot encoders and neighbourhood cross-attention."""

from __future__ import annotations

import torch
from torch import nn


class MLPEncoder(nn.Module):
    """Per-token MLP: ``Linear–BatchNorm–ReLU–Dropout`` layers, then a linear output layer.

    This is the stage-I modality encoder of the method (gene or image), applied to every token of a
    neighbourhood independently.

    Parameters
    ----------
    n_input
        Input feature dimension ``d``.
    n_hidden
        Widths of the hidden layers, e.g. ``(1024, 512)`` in the paper.
    n_output
        Output embedding dimension.
    dropout
        Dropout rate after each hidden layer.
    input_dropout
        Dropout rate on the input features (regularises wide expression inputs).

    """

    def __init__(
        self,
        n_input: int,
        n_hidden: tuple[int, ...],
        n_output: int,
        dropout: float = 0.2,
        input_dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout > 0 else []
        width = n_input
        for n_out in n_hidden:
            layers += [nn.Linear(width, n_out), nn.BatchNorm1d(n_out), nn.ReLU(), nn.Dropout(dropout)]
            width = n_out
        layers.append(nn.Linear(width, n_output))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` of shape ``(..., n_input)`` to ``(..., n_output)``."""
        lead = x.shape[:-1]
        return self.net(x.reshape(-1, x.shape[-1])).reshape(*lead, -1)


class CrossAttentionBlock(nn.Module):
    """Multi-head cross-attention from one modality's tokens to another's, with residual and LayerNorm.

    ``out = LayerNorm(query + MHA(query, context, context))``. With ``query is context`` it is plain
    self-attention, which is how a spot without an image is handled.

    Parameters
    ----------
    n_embed
        Token width (shared by query and context).
    n_heads
        Number of attention heads.
    dropout
        Dropout on the attention weights.

    """

    def __init__(self, n_embed: int, n_heads: int = 8, dropout: float = 0.1):
        super().__init__()
        self.attention = nn.MultiheadAttention(n_embed, n_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(n_embed)

    def forward(
        self,
        query: torch.Tensor,
        context: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``query`` to ``context`` ``(B, k, e)``.

        ``query`` is ``(B, q, e)`` tokens, or ``(B, e)`` for a single query per sample (SpaCRD only reads
        the centre spot's output, so it attends from the centre alone; the result equals row 0 of the
        full ``(B, k, e)`` attention). ``padding_mask`` ``(B, k)`` is ``True`` for context tokens that
        must be ignored (padded neighbours of spots in sections with fewer than ``k`` spots). Returns a
        tensor of the shape of ``query``.
        """
        single = query.ndim == 2
        queries = query.unsqueeze(1) if single else query
        attended, _ = self.attention(
            queries, context, context, key_padding_mask=padding_mask, need_weights=False
        )
        out = self.norm(queries + attended)
        return out.squeeze(1) if single else out


class GaussianEncoder(nn.Module):
    """MLP mapping ``(B, n_input)`` to the mean and log-variance of a diagonal Gaussian ``(B, n_latent)``."""

    def __init__(self, n_input: int, n_hidden: tuple[int, ...], n_latent: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_input
        for n_out in n_hidden:
            layers += [nn.Linear(width, n_out), nn.ReLU()]
            width = n_out
        self.net = nn.Sequential(*layers)
        self.mean = nn.Linear(width, n_latent)
        self.log_var = nn.Linear(width, n_latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, log_var)``, each ``(B, n_latent)``; log-variance clamped for stability."""
        h = self.net(x)
        return self.mean(h), self.log_var(h).clamp(-10.0, 10.0)


class MLPDecoder(nn.Module):
    """MLP ``Linear–ReLU`` stack mapping ``(B, n_latent)`` back to ``(B, n_output)``."""

    def __init__(self, n_latent: int, n_hidden: tuple[int, ...], n_output: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_latent
        for n_out in n_hidden:
            layers += [nn.Linear(width, n_out), nn.ReLU()]
            width = n_out
        layers.append(nn.Linear(width, n_output))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``z`` ``(B, n_latent)`` to ``(B, n_output)``."""
        return self.net(z)
