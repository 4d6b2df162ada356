"""Building blocks of the SpaCRD network: per-spot encoders and neighbourhood cross-attention."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ShiftedSparse:
    """A dense matrix ``values - shift[rows]`` kept as a sparse part and one dense row per group.

    Standardised expression ``(x - centre) / spread`` of sparse counts is dense; written as
    ``x / spread - centre / spread`` its first part keeps the sparsity of ``x``, and the second is one
    row per section. A linear layer applied to it costs a sparse product plus one dense product per
    section, instead of densifying the batch.

    Attributes
    ----------
    values
        ``(n, d)`` sparse CSR tensor, e.g. ``x / spread`` per row's section.
    shift
        ``(n_groups, d)`` dense, e.g. ``centre / spread`` per section.
    rows
        ``(n,)`` int64 group of each row.

    """

    values: torch.Tensor
    shift: torch.Tensor
    rows: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def to(self, device: torch.device | str) -> ShiftedSparse:
        return ShiftedSparse(self.values.to(device), self.shift.to(device), self.rows.to(device))

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``F.linear`` of the dense matrix, ``(n, out)``, without building it."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            out = torch.sparse.mm(self.values, weight.T)
        out = out - (self.shift @ weight.T)[self.rows]
        return out if bias is None else out + bias

    def dense(self) -> torch.Tensor:
        """The ``(n, d)`` dense matrix (for tests and small inputs)."""
        return self.values.to_dense() - self.shift[self.rows]


def linear_input(layer: nn.Module, x: torch.Tensor | ShiftedSparse) -> torch.Tensor:
    """Apply ``layer`` (a :class:`~torch.nn.Linear`, or a ``Sequential`` of input dropout and one) to ``x``.

    Dropout is the identity in evaluation, the only mode :class:`ShiftedSparse` inputs are used in.
    """
    if not isinstance(x, ShiftedSparse):
        return layer(x)
    linear = (
        layer
        if isinstance(layer, nn.Linear)
        else next(m for m in layer.modules() if isinstance(m, nn.Linear))
    )
    if layer.training:
        raise RuntimeError("Sparse-shifted inputs are for evaluation; training batches are dense.")
    return x.linear(linear.weight, linear.bias)


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

    def forward(self, x: torch.Tensor | ShiftedSparse) -> torch.Tensor:
        """Encode ``x`` of shape ``(..., n_input)`` to ``(..., n_output)``.

        A :class:`ShiftedSparse` ``(n, n_input)`` input (evaluation only) goes through the first linear
        layer as a sparse product.
        """
        if isinstance(x, ShiftedSparse):
            first = next(i for i, m in enumerate(self.net) if isinstance(m, nn.Linear))
            return self.net[first + 1 :](linear_input(self.net[first], x))
        lead = x.shape[:-1]
        return self.net(x.reshape(-1, x.shape[-1])).reshape(*lead, -1)


class CrossAttentionBlock(nn.Module):
    """Multi-head cross-attention from one modality's tokens to another's, with residual and LayerNorm.

    ``out = LayerNorm(query + MHA(query, context, context))``. With ``query is context`` it is plain
    self-attention, which is how a spot without an image is handled. The weights are those of a
    :class:`torch.nn.MultiheadAttention` (``attention``), applied here with
    :func:`torch.nn.functional.scaled_dot_product_attention` so that keys and values can be projected
    once per distinct spot and gathered per neighbourhood.

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
        neighbors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``query`` to the context tokens of each sample.

        Parameters
        ----------
        query
            ``(B, q, e)`` query tokens, or ``(B, e)`` for a single query per sample (SpaCRD only reads
            the centre spot's output, so it attends from the centre alone; the result equals row 0 of
            the full ``(B, k, e)`` attention).
        context
            ``(B, k, e)`` context tokens, or with ``neighbors`` ``(U, e)`` embeddings of distinct spots.
        padding_mask
            ``(B, k)`` true for context tokens to ignore (padded neighbours of spots in sections with
            fewer than ``k`` spots).
        neighbors
            ``(B, k)`` rows of each sample's context tokens in ``context``: keys and values are then
            projected once per distinct spot and gathered, instead of once per token.

        Returns
        -------
        A tensor of the shape of ``query``.

        """
        single = query.ndim == 2
        queries = query.unsqueeze(1) if single else query
        attention = self.attention
        n_heads, width = attention.num_heads, attention.embed_dim
        w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attention.in_proj_bias.chunk(3)
        keys, values = F.linear(context, w_k, b_k), F.linear(context, w_v, b_v)
        if neighbors is not None:
            keys, values = keys[neighbors], values[neighbors]
        batch, n_query, n_context = queries.shape[0], queries.shape[1], keys.shape[1]

        def heads(tokens: torch.Tensor, n: int) -> torch.Tensor:  # (B, n, e) -> (B, heads, n, e / heads)
            return tokens.reshape(batch, n, n_heads, width // n_heads).transpose(1, 2)

        # True where a query may attend; scaled by 1 / sqrt(head width), as MultiheadAttention does
        allowed = None if padding_mask is None else ~padding_mask.bool()[:, None, None, :]
        attended = F.scaled_dot_product_attention(
            heads(F.linear(queries, w_q, b_q), n_query),
            heads(keys, n_context),
            heads(values, n_context),
            attn_mask=allowed,
            dropout_p=attention.dropout if self.training else 0.0,
        )
        attended = attention.out_proj(attended.transpose(1, 2).reshape(batch, n_query, width))
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
