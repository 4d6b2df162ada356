"""The SpaCRD network: modality encoders, bidirectional cross-attention, category-regularised VAE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn
from torch.distributions import Normal, kl_divergence

from spacrd._constants import MODULE_KEYS, TENSOR_KEYS, UNLABELLED
from spacrd._stages import STAGES as TRAINING_STAGES
from spacrd._stages import Stage
from spacrd._validation import check_bool, check_number
from spacrd.nn import CrossAttentionBlock, GaussianEncoder, MLPDecoder, MLPEncoder, ShiftedSparse
from spacrd.nn._blocks import Dropout, linear_input

from ._tokens import masked_mean as _masked_mean
from ._tokens import token_mean as _token_mean
from ._tokens import tokens as _tokens

#: Names of the module's stage losses, in training order (the training schedule is :data:`spacrd.model.STAGES`).
STAGES: tuple[Stage, ...] = tuple(stage.name for stage in TRAINING_STAGES)


#: Upper bound of the layer widths a module may declare (a model file asking for more is damaged).
MAX_WIDTH = 65_536


def _check_architecture(args: dict) -> None:
    """Types and ranges of the module's arguments, checked before any weight is allocated."""
    check_number("n_genes", args["n_genes"], integer=True, low=1, high=10 * MAX_WIDTH)
    check_number("n_image_features", args["n_image_features"], integer=True, low=0, high=MAX_WIDTH)
    hidden = args["n_hidden"]
    if not isinstance(hidden, tuple | list):
        raise TypeError(f"`n_hidden` must be a tuple of layer widths, e.g. (1024, 512), got {hidden!r}.")
    for width in hidden:
        check_number("n_hidden", width, integer=True, low=1, high=MAX_WIDTH)
    for name in ("n_embed", "n_heads", "n_latent"):
        check_number(name, args[name], integer=True, low=1, high=MAX_WIDTH)
    if args["n_embed"] % args["n_heads"]:
        raise ValueError(
            f"`n_embed` ({args['n_embed']}) must be a multiple of `n_heads` ({args['n_heads']})."
        )
    for name in ("dropout", "input_dropout", "attention_dropout"):
        check_number(name, args[name], low=0, high=1, high_open=True)
    check_number("temperature", args["temperature"], low=0, low_open=True)
    check_number("contrastive_alpha", args["contrastive_alpha"], low=0, high=1)
    for name in ("kl_weight", "fused_weight", "class_mean_margin"):
        check_number(name, args[name], low=0)
    check_bool("wide", args["wide"])
    check_number("n_members", args["n_members"], integer=True, low=1, high=64)


def _head(n_latent: int) -> nn.Sequential:
    """A classifier head: ``concat(mu, sigma)`` of the VAE posterior ``(B, 2 n_latent)`` to a logit ``(B, 1)``."""
    return nn.Sequential(nn.Linear(2 * n_latent, 64), nn.ReLU(), nn.Linear(64, 1))


class SpaCRDModule(BaseModuleClass):
    """SpaCRD network over spot neighbourhoods.

    Every sample is a spot with its ``k`` spatial neighbours (itself first). Each token carries the
    spot's preprocessed expression (``n_genes``) and, when available, its histology embedding
    (``n_image_features``). A minibatch holds the features of its distinct spots once and each
    neighbourhood as rows into them (:data:`spacrd._constants.TENSOR_KEYS`).

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
    n_members
        Classifier heads (each with its own wide term) on the shared network: a bootstrap ensemble
        (Osband et al., NeurIPS 2016). In stage III every head weighs each labelled spot of a minibatch
        by its own Poisson(1) draw, so the heads fit different resamples of the training spots; the
        cancer logit is their mean and their spread says how much the training data pin the spot's
        call down. ``1`` is the single classifier of the method (and of models saved before members).

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
        n_members: int = 5,
    ):
        super().__init__()
        _check_architecture(locals())
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
        self.n_members = n_members
        # the first head keeps the single classifier's parameter names, so older model files load
        self.classifier = _head(n_latent)
        self.member_heads = nn.ModuleList([_head(n_latent) for _ in range(n_members - 1)])
        self.wide = (
            nn.Sequential(Dropout(input_dropout), nn.Linear(n_genes, n_members, bias=False)) if wide else None
        )

    # ------------------------------------------------------------------ inference
    def _get_inference_input(
        self, tensors: dict[str, torch.Tensor], **kwargs
    ) -> dict[str, torch.Tensor | None]:
        return {
            "spot_genes": tensors[TENSOR_KEYS.SPOT_GENES],
            "neighbors": tensors[TENSOR_KEYS.NEIGHBORS],
            "padding_mask": tensors.get(TENSOR_KEYS.PADDING_MASK),
            "spot_image": tensors.get(TENSOR_KEYS.SPOT_IMAGE),
            "spot_has_image": tensors.get(TENSOR_KEYS.SPOT_HAS_IMAGE),
        }

    def _embed(
        self, genes: torch.Tensor, image: torch.Tensor | None, has_image: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L2-normalised (over features) gene and image embeddings ``(..., e)`` and the image mask ``(...)``.

        Inputs are ``(..., n_genes)`` and ``(..., n_image_features)``: spots or neighbourhood tokens.
        Where a spot has no image, its gene embedding stands in for the image one.
        """
        gene_emb = F.normalize(self.gene_encoder(genes), dim=-1)
        if self.image_encoder is None or image is None:
            mask = torch.zeros(gene_emb.shape[:-1], dtype=torch.bool, device=gene_emb.device)
            return gene_emb, gene_emb, mask
        assert has_image is not None  # images come with their mask
        mask = has_image.bool()
        image_emb = F.normalize(self.image_encoder(torch.nan_to_num(image)), dim=-1)
        image_emb = torch.where(mask.unsqueeze(-1), image_emb, gene_emb)
        return gene_emb, image_emb, mask

    def _fuse(
        self,
        spot_genes: torch.Tensor,
        neighbors: torch.Tensor,
        padding_mask: torch.Tensor | None,
        spot_image: torch.Tensor | None,
        spot_has_image: torch.Tensor | None,
        gene_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fused embedding ``h`` ``(B, n_embed)`` of each neighbourhood and its centre spot's embeddings.

        In training every token is encoded on its own, so that a spot that sits in several neighbourhoods
        of a minibatch gets an independent input-dropout mask in each, as in the method. Without dropout
        (evaluation) the encoders are deterministic, so each distinct spot is encoded once, its attention
        keys and values are projected once, and the neighbourhoods gather them: the same result for
        ``k`` times less work. ``gene_tokens`` (training) is ``spot_genes[neighbors]`` when the caller
        has it already.
        """
        if self.training:
            if gene_tokens is None:
                gene_tokens = _tokens(spot_genes, neighbors)
            image = _tokens(spot_image, neighbors) if spot_image is not None else None
            has_image = _tokens(spot_has_image, neighbors) if spot_has_image is not None else None
            gene_emb, image_emb, mask = self._embed(gene_tokens, image, has_image)
            gene_centre, image_centre, mask_centre = gene_emb[:, 0], image_emb[:, 0], mask[:, 0]
            context = {"padding_mask": padding_mask}
        else:
            gene_emb, image_emb, mask = self._embed(spot_genes, spot_image, spot_has_image)
            centres = neighbors[:, 0]
            gene_centre, image_centre, mask_centre = gene_emb[centres], image_emb[centres], mask[centres]
            context = {"padding_mask": padding_mask, "neighbors": neighbors}
        # Only the centre spot's outputs are fused, so only the centre queries the context.
        gene_guided = self.gene_guided_attention(gene_centre, image_emb, **context)
        image_guided = self.image_guided_attention(image_centre, gene_emb, **context)
        h = self.fusion(torch.cat([gene_guided, image_guided], dim=-1))
        centre = {
            MODULE_KEYS.GENE_EMB: gene_centre,
            MODULE_KEYS.IMAGE_EMB: image_centre,
            MODULE_KEYS.HAS_IMAGE: mask_centre,
        }
        return h, centre

    @auto_move_data
    def inference(
        self,
        spot_genes: torch.Tensor,
        neighbors: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        spot_image: torch.Tensor | None = None,
        spot_has_image: torch.Tensor | None = None,
        centre_only: bool = False,
        classify: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Encode neighbourhoods.

        Parameters
        ----------
        spot_genes
            ``(U, n_genes)`` preprocessed expression of the distinct spots of the minibatch; in
            evaluation also as a :class:`~spacrd.nn.ShiftedSparse` (sparse counts and per-section shifts),
            which the first layers read without densifying.
        neighbors
            ``(B, k)`` rows of each neighbourhood into the spot arrays, centre spot first.
        padding_mask
            ``(B, k)`` true for padded neighbour slots to ignore in attention and in the wide term.
        spot_image
            ``(U, n_image_features)`` scaled histology features, or ``None``.
        spot_has_image
            ``(U,)`` true where the spot has a histology embedding.
        centre_only
            Only embed the centre spots (stage I); skips attention and the VAE.
        classify
            Compute the cancer logits; stage II, whose loss does not read them, skips the classifier heads
            and the wide term.

        Returns
        -------
        Dict (keys in :data:`spacrd._constants.MODULE_KEYS`): ``gene_emb``, ``image_emb`` ``(B, e)`` and
        ``has_image`` ``(B,)`` of the centre spots; unless ``centre_only`` also the fused embedding ``h``
        ``(B, n_embed)``, the posterior ``qz_mean``, ``qz_log_var``, a sample ``z`` ``(B, n_latent)`` and
        with ``classify`` the cancer ``logits`` ``(B,)`` and each member's ``member_logits``
        ``(B, n_members)``.

        """
        if isinstance(spot_genes, ShiftedSparse):
            spot_genes = spot_genes.to(neighbors.device)
        if centre_only:
            centres = neighbors[:, 0]
            gene_emb, image_emb, mask = self._embed(
                spot_genes[centres],
                spot_image[centres] if spot_image is not None else None,
                spot_has_image[centres] if spot_has_image is not None else None,
            )
            return {
                MODULE_KEYS.GENE_EMB: gene_emb,
                MODULE_KEYS.IMAGE_EMB: image_emb,
                MODULE_KEYS.HAS_IMAGE: mask,
            }

        # in training the encoder and the wide term read the same tokens: gathered once
        gene_tokens = _tokens(spot_genes, neighbors) if self.training else None
        h, outputs = self._fuse(spot_genes, neighbors, padding_mask, spot_image, spot_has_image, gene_tokens)
        qz_mean, qz_log_var = self.vae_encoder(h)
        qz = Normal(qz_mean, torch.exp(0.5 * qz_log_var))
        z = qz.rsample() if self.training else qz_mean
        outputs.update(
            {
                MODULE_KEYS.H: h,
                MODULE_KEYS.QZ_MEAN: qz_mean,
                MODULE_KEYS.QZ_LOG_VAR: qz_log_var,
                MODULE_KEYS.Z: z,
            }
        )
        if not classify:
            return outputs
        posterior = torch.cat([qz_mean, qz.scale], dim=-1)
        member_logits = torch.cat([head(posterior) for head in (self.classifier, *self.member_heads)], dim=-1)
        if self.wide is not None:
            member_logits = member_logits + self._wide_term(spot_genes, neighbors, padding_mask, gene_tokens)
        outputs.update({MODULE_KEYS.LOGITS: member_logits.mean(-1), MODULE_KEYS.MEMBER_LOGITS: member_logits})
        return outputs

    def _wide_term(
        self,
        spot_genes: torch.Tensor,
        neighbors: torch.Tensor,
        padding_mask: torch.Tensor | None,
        gene_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Linear term of every member on each neighbourhood's mean expression, ``(B, n_members)``.

        Training applies input dropout to the mean vector, as the method does. The linear map has no
        bias, so in evaluation the mean of the per-spot terms is the same number at a fraction of the cost.
        ``gene_tokens`` (training) is ``spot_genes[neighbors]`` when the caller has it already.
        """
        assert self.wide is not None  # called only for a model with a wide term
        if self.training:
            if gene_tokens is None:
                gene_tokens = _tokens(spot_genes, neighbors)
            return self.wide(_token_mean(gene_tokens, padding_mask))
        per_spot = linear_input(self.wide, spot_genes)  # dropout is the identity in evaluation
        return _masked_mean(per_spot[neighbors], padding_mask)

    # ----------------------------------------------------------------- generative
    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict[str, torch.Tensor | None]:
        return {"z": inference_outputs.get(MODULE_KEYS.Z)}

    @auto_move_data
    def generative(self, z: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
        """Decode the latent ``z`` ``(B, n_latent)`` to the reconstructed fused embedding ``(B, n_embed)``."""
        return {MODULE_KEYS.H_REC: None if z is None else self.vae_decoder(z)}

    # ----------------------------------------------------------------------- loss
    def _contrastive_loss(self, inference_outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Symmetric InfoNCE between centre image and gene embeddings of the spots with an image."""
        has_image = inference_outputs[MODULE_KEYS.HAS_IMAGE]
        gene_emb = inference_outputs[MODULE_KEYS.GENE_EMB][has_image]
        image_emb = inference_outputs[MODULE_KEYS.IMAGE_EMB][has_image]
        if gene_emb.shape[0] < 2:
            # Nothing to contrast (expression-only batch); keep the graph so Lightning can step.
            return inference_outputs[MODULE_KEYS.GENE_EMB].sum() * 0.0
        logits = image_emb @ gene_emb.T / self.temperature
        target = torch.arange(logits.shape[0], device=logits.device)
        image_to_gene = F.cross_entropy(logits, target)
        gene_to_image = F.cross_entropy(logits.T, target)
        return self.contrastive_alpha * image_to_gene + (1 - self.contrastive_alpha) * gene_to_image

    def _fused_loss(
        self, labels: torch.Tensor, inference_outputs: dict[str, torch.Tensor], generative_outputs: dict
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-spot reconstruction and KL-to-class-prior terms, the labelled mask and the margin penalty."""
        h = inference_outputs[MODULE_KEYS.H]
        reconstruction = F.mse_loss(generative_outputs[MODULE_KEYS.H_REC], h, reduction="none").mean(-1)
        labelled = labels != UNLABELLED
        mean, log_var = inference_outputs[MODULE_KEYS.QZ_MEAN], inference_outputs[MODULE_KEYS.QZ_LOG_VAR]
        qz = Normal(mean, torch.exp(0.5 * log_var))
        # category-regularised prior: N(m_y, I) with the learnt mean of the spot's class
        pz = Normal(self.class_means[labels.clamp(min=0)], torch.ones_like(mean))
        kl = kl_divergence(qz, pz).sum(-1)
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
        n_obs = tensors[TENSOR_KEYS.NEIGHBORS].shape[0]
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

        logits = inference_outputs[MODULE_KEYS.LOGITS]
        member_logits = inference_outputs[MODULE_KEYS.MEMBER_LOGITS]
        targets = labels.clamp(min=0).float()[:, None].expand_as(member_logits)
        bce = F.binary_cross_entropy_with_logits(member_logits, targets, reduction="none")
        weights = labelled[:, None].float().expand_as(bce)
        if self.training and self.n_members > 1:  # each head its own bootstrap resample of the spots
            weights = weights * torch.poisson(torch.ones_like(bce))
        classification = ((bce * weights).sum(0) / weights.sum(0).clamp(min=1.0)).mean()
        return LossOutput(
            loss=classification + self.fused_weight * fused,
            reconstruction_loss=reconstruction,
            kl_local=self.kl_weight * kl,
            classification_loss=classification,
            logits=logits,
            true_labels=labels,
            extra_metrics={"fused_loss": fused, "classification_loss": classification},
        )
