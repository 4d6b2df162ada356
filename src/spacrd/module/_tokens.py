"""Gathering and averaging a minibatch's neighbourhood tokens."""

from __future__ import annotations

import torch


def tokens(spots: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """The rows of ``spots`` ``(U, ...)`` of every neighbourhood token, ``(B, k, ...)`` (``spots[neighbors]``).

    ``index_select`` copies the same values as advanced indexing at a fraction of its cost on the CPU.
    """
    return spots.index_select(0, neighbors.reshape(-1)).view(*neighbors.shape, *spots.shape[1:])


def masked_mean(tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the neighbourhood axis of ``tokens`` ``(B, k, d)``, leaving out padded slots: ``(B, d)``."""
    if padding_mask is None:
        return tokens.mean(dim=1)
    keep = (~padding_mask.bool()).unsqueeze(-1).to(tokens.dtype)
    return (tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


def token_mean(tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """:func:`masked_mean` of wide ``tokens`` ``(B, k, n_genes)`` as one batched product ``(B, 1, k) @ (B, k, n_genes)``.

    The same mean up to rounding, without materialising the ``(B, k, n_genes)`` product of the tokens
    and the mask (training's wide term reads every token of the minibatch).
    """
    if padding_mask is None:
        return tokens.mean(dim=1)
    keep = (~padding_mask.bool()).to(tokens.dtype)
    weights = keep / keep.sum(dim=1, keepdim=True).clamp(min=1.0)
    return torch.bmm(weights.unsqueeze(1), tokens).squeeze(1)
