"""The SpaCRD network: modality encoders, bidirectional cross-attention, category-regularised VAE."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from spacrd.nn import CrossAttentionBlock, GaussianEncoder, MLPDecoder, MLPEncoder

from ._constants import TENSOR_KEYS, UNLABELLED

Stage = Literal["align", "fuse", "classify"]
STAGES: tuple[Stage, ...] = ("align", "fuse", "classify")


def _masked_mean(tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the neighbourhood axis of ``tokens`` ``(B, k, d)``, leaving out padded slots: ``(B, d)``."""
    if padding_mask is None:
        return tokens.mean(dim=1)
    keep = (~padding_mask.bool()).unsqueeze(-1).to(tokens.dtype)
    return (tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


class SpaCRDModule(BaseModuleClass):
    """SpaCRD network over spot neighbourhoods.

    Every sample is a spot with its ``k`` spatial neighbours (itself first). Each token carries the
    spot's preprocessed expression (``n_genes``) and, when available, its histology embedding
    (``n_image_features``).

    * Stage I (``"align"``): gene and image encoders embed the centre spot; a symmetric CLIP-style
      InfoNCE aligns the two modalities over the minibatch.
    * Stage II (``"fuse"``): gene-guided and H&E-guided cross-attention over the neighbour tokens;
      the two centre outputs are fused into ``h`` (``n_embed``) and encoded by a VAE whose prior for a
      spot of class ``y`` is ``N(m_y, I)`` with one learnable mean ``m_y`` per class.
    * Stage III (``"classify"``): a classifier on ``concat(mu, sigma)`` of the VAE posterior gives the
      cancer logit; loss is BCE plus ``fused_weight`` times the stage-II loss.

    Tokens without an image (``image_mask`` false) use their gene embedding in the image branch, so a
    model without images, or a section without one, runs the same fusion path as self-attention over
    gene tokens.

    Parameters
    ----------
    n_genes
        Number of expression features per token.
    n_image_features
        Number of histology features per token; ``0`` for an expression-only model.
    n_hidden
        Hidden widths of the two modality encoders. The default ``()`` is a linear encoder with input
        dropout: on held-out HER2ST patients it generalised better than the paper's
        ``(1024, 512)`` MLP, which fits the few source patients too closely.
    n_embed
        Width of the aligned embeddings, the attention tokens and the fused embedding ``h``.
    n_heads
        Attention heads in each cross-attention block.
    n_latent
        Dimension of the VAE latent.
    dropout
        Dropout in the modality encoders.
    input_dropout
        Dropout on the encoders' input features.
    attention_dropout
        Dropout on attention weights.
    temperature
        InfoNCE temperature ``tau``.
    contrastive_alpha
        Weight of the image-to-gene direction of InfoNCE (``1 - alpha`` for gene-to-image).
    kl_weight
        ``beta``, weight of the KL term of the stage-II loss.
    fused_weight
        ``gamma``, weight of the stage-II loss inside the stage-III loss.
    class_mean_margin
        The two class means are pushed apart only while their distance is below this margin (a
        bounded hinge; the research code's ``-||m_0 - m_1||`` is unbounded below). ``0`` disables it.
    wide
        Add a linear term on the neighbourhood-mean expression to the classifier's logit (a "wide and
        deep" head). The deep path models what the linear term cannot; the linear term carries the
        plain expression signal that a 16-dimensional latent can squeeze out.

    """

    def __init__(
        self,
        n_genes: int,
        n_image_features: int = 0,
        n_hidden: tuple[int, ...] = (),
        n_embed: int = 64,
        n_heads: int = 8,
        n_latent: int = 16,
        dropout: float = 0.2,
        input_dropout: float = 0.5,
        attention_dropout: float = 0.1,
        temperature: float = 0.07,
        contrastive_alpha: float = 0.5,
        kl_weight: float = 0.5,
        fused_weight: float = 0.1,
        class_mean_margin: float = 2.0,
        wide: bool = True,
    ):
        super().__init__()
        self.n_genes = n_genes
        self.n_image_features = n_image_features
        self.temperature = temperature
        self.contrastive_alpha = contrastive_alpha
        self.kl_weight = kl_weight
        self.fused_weight = fused_weight
        self.class_mean_margin = class_mean_margin

        self.gene_encoder = MLPEncoder(n_genes, n_hidden, n_embed, dropout, input_dropout)
        self.image_encoder = (
            MLPEncoder(n_image_features, n_hidden, n_embed, dropout, input_dropout)
            if n_image_features
            else None
        )
        self.gene_guided_attention = CrossAttentionBlock(n_embed, n_heads, attention_dropout)
        self.image_guided_attention = CrossAttentionBlock(n_embed, n_heads, attention_dropout)
        self.fusion = nn.Sequential(
            nn.Linear(2 * n_embed, n_embed), nn.ReLU(), nn.Linear(n_embed, n_embed), nn.LayerNorm(n_embed)
        )
        vae_hidden = (max(n_embed // 2, n_latent), max(n_embed // 4, n_latent))
        self.vae_encoder = GaussianEncoder(n_embed, vae_hidden, n_latent)
        self.vae_decoder = MLPDecoder(n_latent, vae_hidden[::-1], n_embed)
        # Class 0 = non-cancer, 1 = cancer; start apart so the prior is informative from step one.
        init = torch.zeros(2, n_latent)
        init[0, 0], init[1, 0] = -1.0, 1.0
        self.class_means = nn.Parameter(init)
        self.classifier = nn.Sequential(nn.Linear(2 * n_latent, 64), nn.ReLU(), nn.Linear(64, 1))
        self.wide = (
            nn.Sequential(nn.Dropout(input_dropout), nn.Linear(n_genes, 1, bias=False)) if wide else None
        )

    # ------------------------------------------------------------------ inference
    def _get_inference_input(
        self, tensors: dict[str, torch.Tensor], **kwargs
    ) -> dict[str, torch.Tensor | None]:
        return {
            "gene_tokens": tensors[TENSOR_KEYS.GENE_TOKENS],
            "image_tokens": tensors.get(TENSOR_KEYS.IMAGE_TOKENS),
            "image_mask": tensors.get(TENSOR_KEYS.IMAGE_MASK),
            "padding_mask": tensors.get(TENSOR_KEYS.PADDING_MASK),
        }

    def _embed_tokens(
        self, gene_tokens: torch.Tensor, image_tokens: torch.Tensor | None, image_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L2-normalised (over features) gene and image embeddings ``(B, k', e)`` and the image mask."""
        gene_emb = F.normalize(self.gene_encoder(gene_tokens), dim=-1)
        if self.image_encoder is None or image_tokens is None:
            mask = torch.zeros(gene_tokens.shape[:-1], dtype=torch.bool, device=gene_tokens.device)
            return gene_emb, gene_emb, mask
        mask = image_mask.bool()
        image_emb = F.normalize(self.image_encoder(torch.nan_to_num(image_tokens)), dim=-1)
        image_emb = torch.where(mask.unsqueeze(-1), image_emb, gene_emb)
        return gene_emb, image_emb, mask

    @auto_move_data
    def inference(
        self,
        gene_tokens: torch.Tensor,
        image_tokens: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        centre_only: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Encode neighbourhoods.

        Parameters
        ----------
        gene_tokens
            ``(B, k, n_genes)`` preprocessed expression of each spot's neighbourhood, centre first.
        image_tokens
            ``(B, k, n_image_features)`` histology embeddings, or ``None``.
        image_mask
            ``(B, k)`` true where the token has an image embedding.
        padding_mask
            ``(B, k)`` true for padded neighbour slots to ignore in attention.
        centre_only
            Only embed the centre spots (stage I); skips attention and the VAE.

        """
        if centre_only:
            gene_tokens = gene_tokens[:, :1]
            image_tokens = image_tokens[:, :1] if image_tokens is not None else None
            image_mask = image_mask[:, :1] if image_mask is not None else None
        gene_emb, image_emb, mask = self._embed_tokens(gene_tokens, image_tokens, image_mask)
        outputs = {"gene_emb": gene_emb[:, 0], "image_emb": image_emb[:, 0], "has_image": mask[:, 0]}
        if centre_only:
            return outputs

        gene_guided = self.gene_guided_attention(gene_emb, image_emb, padding_mask)
        image_guided = self.image_guided_attention(image_emb, gene_emb, padding_mask)
        h = self.fusion(torch.cat([gene_guided[:, 0], image_guided[:, 0]], dim=-1))
        qz_mean, qz_log_var = self.vae_encoder(h)
        qz_std = torch.exp(0.5 * qz_log_var)
        z = qz_mean + qz_std * torch.randn_like(qz_std) if self.training else qz_mean
        logits = self.classifier(torch.cat([qz_mean, qz_std], dim=-1)).squeeze(-1)
        if self.wide is not None:
            logits = logits + self.wide(_masked_mean(gene_tokens, padding_mask)).squeeze(-1)
        outputs.update(h=h, qz_mean=qz_mean, qz_log_var=qz_log_var, z=z, logits=logits)
        return outputs

    # ----------------------------------------------------------------- generative
    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict[str, torch.Tensor | None]:
        return {"z": inference_outputs.get("z")}

    @auto_move_data
    def generative(self, z: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
        """Decode the latent ``z`` ``(B, n_latent)`` to the reconstructed fused embedding ``(B, n_embed)``."""
        return {"h_rec": None if z is None else self.vae_decoder(z)}

    # ----------------------------------------------------------------------- loss
    def _contrastive_loss(self, inference_outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Symmetric InfoNCE between centre image and gene embeddings of the spots with an image."""
        has_image = inference_outputs["has_image"]
        gene_emb = inference_outputs["gene_emb"][has_image]
        image_emb = inference_outputs["image_emb"][has_image]
        if gene_emb.shape[0] < 2:
            # Nothing to contrast (expression-only batch); keep the graph so Lightning can step.
            return inference_outputs["gene_emb"].sum() * 0.0
        logits = image_emb @ gene_emb.T / self.temperature
        target = torch.arange(logits.shape[0], device=logits.device)
        image_to_gene = F.cross_entropy(logits, target)
        gene_to_image = F.cross_entropy(logits.T, target)
        return self.contrastive_alpha * image_to_gene + (1 - self.contrastive_alpha) * gene_to_image

    def _fused_loss(
        self, labels: torch.Tensor, inference_outputs: dict[str, torch.Tensor], generative_outputs: dict
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-spot reconstruction and KL-to-class-prior terms, the labelled mask and the margin penalty."""
        h = inference_outputs["h"]
        reconstruction = F.mse_loss(generative_outputs["h_rec"], h, reduction="none").mean(-1)
        labelled = labels != UNLABELLED
        prior_mean = self.class_means[labels.clamp(min=0)]
        mean, log_var = inference_outputs["qz_mean"], inference_outputs["qz_log_var"]
        kl = 0.5 * (log_var.exp() + (mean - prior_mean) ** 2 - log_var - 1).sum(-1)
        kl = torch.where(labelled, kl, torch.zeros_like(kl))
        separation = torch.linalg.vector_norm(self.class_means[1] - self.class_means[0])
        margin_penalty = F.relu(self.class_mean_margin - separation)
        return reconstruction, kl, labelled, margin_penalty

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.Tensor | None],
        stage: Stage = "classify",
    ) -> LossOutput:
        """Loss of one training stage; see the class docstring for the three stages."""
        if stage not in STAGES:
            raise ValueError(f"Unknown stage {stage!r}; expected one of {STAGES}.")
        n_obs = tensors[TENSOR_KEYS.GENE_TOKENS].shape[0]
        if stage == "align":
            contrastive = self._contrastive_loss(inference_outputs)
            return LossOutput(
                loss=contrastive, n_obs_minibatch=n_obs, extra_metrics={"contrastive_loss": contrastive}
            )

        labels = tensors[TENSOR_KEYS.LABELS].reshape(-1).long()
        reconstruction, kl, labelled, margin_penalty = self._fused_loss(
            labels, inference_outputs, generative_outputs
        )
        n_labelled = labelled.sum().clamp(min=1)
        fused = reconstruction.mean() + self.kl_weight * kl.sum() / n_labelled + margin_penalty
        if stage == "fuse":
            return LossOutput(
                loss=fused,
                reconstruction_loss=reconstruction,
                kl_local=self.kl_weight * kl,
                extra_metrics={"fused_loss": fused},
            )

        logits = inference_outputs["logits"]
        bce = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0).float(), reduction="none")
        classification = (bce * labelled).sum() / n_labelled
        return LossOutput(
            loss=classification + self.fused_weight * fused,
            reconstruction_loss=reconstruction,
            kl_local=self.kl_weight * kl,
            classification_loss=classification,
            logits=logits,
            true_labels=labels,
            extra_metrics={"fused_loss": fused, "classification_loss": classification},
        )
