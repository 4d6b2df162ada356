"""Building blocks of the SpaCRD network: per-spot encoders and neighbourhood cross-attention."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
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


#: Bits of randomness per element of a CPU dropout mask, finest last (see :func:`dropout`).
_MASK_BITS = (1, 8, 16)


def _cpu_keep_mask(n: int, p: float) -> tuple[np.ndarray, float]:
    """``n`` keep indicators (uint8 or bool) drawn with keep probability ``1 - p``, and that probability.

    The bits come from a NumPy PCG64 stream seeded from torch's default generator, so that
    :func:`torch.manual_seed` (``scvi.settings.seed``) makes them reproducible; a byte of PCG64 costs a
    fraction of one of torch's CPU Bernoulli draws. ``1 - p`` is resolved with the fewest bits of
    :data:`_MASK_BITS` that represent it exactly (one bit for ``p = 0.5``), else rounded to a multiple
    of ``2 ** -16`` (off by at most ``8e-6``).
    """
    keep = 1.0 - p
    bits = next((b for b in _MASK_BITS if float(keep * 2**b).is_integer()), _MASK_BITS[-1])
    threshold = round(keep * 2**bits)
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    rng = np.random.default_rng(seed)
    if bits == 1:  # p = 0.5: one random bit per element
        mask = np.unpackbits(np.frombuffer(rng.bytes(-(-n // 8)), dtype=np.uint8), count=n)
    else:
        dtype = np.uint8 if bits == 8 else np.uint16
        mask = np.frombuffer(rng.bytes(n * np.dtype(dtype).itemsize), dtype=dtype) < threshold
    return mask, threshold / 2**bits


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Dropout: each element of ``x`` zeroed with probability ``p``, the rest scaled by ``1 / (1 - p)``.

    The distribution of :func:`torch.nn.functional.dropout`; on the CPU the mask is drawn from random
    bits (:func:`_cpu_keep_mask`), about ten times faster than torch's Bernoulli draws, which were the
    largest single cost of a training step (the input dropout of every neighbourhood token). Other
    devices use torch's own kernel.
    """
    if not training or p == 0.0:
        return x
    if p >= 1.0 or x.device.type != "cpu" or x.numel() == 0:
        return F.dropout(x, p, True)
    mask, keep = _cpu_keep_mask(x.numel(), p)
    # a float mask: torch multiplies a float tensor by an integer one several times slower
    scaled = torch.from_numpy(mask).view(x.shape).to(x.dtype).mul_(1.0 / keep)
    return x * scaled


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` through :func:`dropout` (its fast CPU mask); the same state and modes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


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
        layers: list[nn.Module] = [Dropout(input_dropout)] if input_dropout > 0 else []
        width = n_input
        for n_out in n_hidden:
            layers += [nn.Linear(width, n_out), nn.BatchNorm1d(n_out), nn.ReLU(), Dropout(dropout)]
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

        if single and self.training:
            attended = self._centre_attention(
                F.linear(query, w_q, b_q), keys, values, padding_mask, n_heads, attention.dropout
            )
            return self.norm(query + attention.out_proj(attended))
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

    @staticmethod
    def _centre_attention(
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor | None,
        n_heads: int,
        dropout_p: float,
    ) -> torch.Tensor:
        """Attention of one projected query ``(B, e)`` per sample over its ``(B, k, e)`` keys and values.

        What :func:`~torch.nn.functional.scaled_dot_product_attention` computes (softmax of the scaled
        dot products, dropout on the weights), written as element-wise products and sums: in training
        on the CPU its general path spends more time in a few thousand tiny batched matrix products.
        """
        batch, n_context, width = keys.shape
        head_width = width // n_heads
        q = query.reshape(batch, 1, n_heads, head_width)
        k = keys.reshape(batch, n_context, n_heads, head_width)
        v = values.reshape(batch, n_context, n_heads, head_width)
        scores = (q * k).sum(-1) * (1.0 / math.sqrt(head_width))  # (B, k, heads)
        if padding_mask is not None:
            scores = scores.masked_fill(padding_mask.bool().unsqueeze(-1), float("-inf"))
        weights = dropout(torch.softmax(scores, dim=1), dropout_p)
        return (weights.unsqueeze(-1) * v).sum(1).reshape(batch, width)


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
