import pytest
import torch

from spacrd._constants import TENSOR_KEYS, UNLABELLED
from spacrd.module import STAGES, SpaCRDModule
from spacrd.nn import CrossAttentionBlock


def _batch(n=16, k=5, n_genes=30, n_image=8, with_image=True, n_spots=40):
    """``n`` neighbourhoods of ``k`` spots drawn from ``n_spots`` distinct spots (so spots are shared)."""
    torch.manual_seed(0)
    neighbors = torch.randint(0, n_spots, (n, k))
    neighbors[:, 0] = torch.arange(n)  # distinct centres
    batch = {
        TENSOR_KEYS.SPOT_GENES: torch.randn(n_spots, n_genes),
        TENSOR_KEYS.NEIGHBORS: neighbors,
        TENSOR_KEYS.PADDING_MASK: torch.zeros(n, k, dtype=torch.bool),
        TENSOR_KEYS.LABELS: torch.tensor([0, 1, UNLABELLED, 1] * (n // 4)),
    }
    if with_image:
        batch[TENSOR_KEYS.SPOT_IMAGE] = torch.randn(n_spots, n_image)
        batch[TENSOR_KEYS.SPOT_HAS_IMAGE] = torch.ones(n_spots, dtype=torch.bool)
    return batch


def test_inference_shapes():
    module = SpaCRDModule(n_genes=30, n_image_features=8, n_hidden=(32,), n_embed=16, n_heads=4, n_latent=6)
    out = module.inference(**module._get_inference_input(_batch()))
    assert out["h"].shape == (16, 16)
    assert out["qz_mean"].shape == out["qz_log_var"].shape == (16, 6)
    assert out["logits"].shape == (16,)
    # Embeddings are normalised over features, not over neighbours.
    torch.testing.assert_close(out["gene_emb"].norm(dim=-1), torch.ones(16))
    assert module.generative(out["z"])["h_rec"].shape == (16, 16)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_losses_are_finite_and_differentiable(stage):
    module = SpaCRDModule(n_genes=30, n_image_features=8, n_hidden=(32,), n_embed=16, n_heads=4, n_latent=6)
    _, _, loss = module(
        _batch(), inference_kwargs={"centre_only": stage == "align"}, loss_kwargs={"stage": stage}
    )
    assert torch.isfinite(loss.loss)
    loss.loss.backward()
    grads = [p.grad for p in module.gene_encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    if stage == "classify":
        assert "classification_loss" in loss.extra_metrics
        # Unlabelled spots add no KL term.
        assert loss.kl_local["kl_local"][2] == 0


def test_unknown_stage_raises():
    module = SpaCRDModule(n_genes=30, n_hidden=(32,), n_embed=16, n_heads=4, n_latent=6)
    with pytest.raises(ValueError, match="Unknown stage"):
        module(_batch(with_image=False), loss_kwargs={"stage": "pretrain"})


def test_expression_only_uses_gene_tokens_in_both_branches():
    module = SpaCRDModule(n_genes=30, n_hidden=(32,), n_embed=16, n_heads=4, n_latent=6)
    assert module.image_encoder is None
    out = module.inference(**module._get_inference_input(_batch(with_image=False)))
    torch.testing.assert_close(out["gene_emb"], out["image_emb"])
    assert not out["has_image"].any()


def test_missing_image_tokens_fall_back_to_gene_embedding():
    module = SpaCRDModule(
        n_genes=30, n_image_features=8, n_hidden=(32,), n_embed=16, n_heads=4, n_latent=6
    ).eval()
    batch = _batch()
    batch[TENSOR_KEYS.SPOT_HAS_IMAGE][:4] = False  # the first four centres have no image
    out = module.inference(**module._get_inference_input(batch))
    torch.testing.assert_close(out["image_emb"][:4], out["gene_emb"][:4])
    assert not torch.allclose(out["image_emb"][4:], out["gene_emb"][4:])


def test_contrastive_loss_rewards_aligned_pairs():
    module = SpaCRDModule(n_genes=4, n_image_features=4, n_hidden=(8,), n_embed=8, n_heads=2, n_latent=2)
    emb = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1)
    aligned = module._contrastive_loss(
        {"gene_emb": emb, "image_emb": emb, "has_image": torch.ones(12, dtype=bool)}
    )
    shuffled = module._contrastive_loss(
        {"gene_emb": emb, "image_emb": emb.roll(1, 0), "has_image": torch.ones(12, dtype=bool)}
    )
    assert aligned < shuffled


def test_class_mean_margin_is_bounded():
    module = SpaCRDModule(n_genes=4, n_hidden=(8,), n_embed=8, n_heads=2, n_latent=2, class_mean_margin=1.0)
    with torch.no_grad():
        module.class_means[:] = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    out = module.inference(**module._get_inference_input(_batch(n_genes=4, with_image=False)))
    gen = module.generative(out["z"])
    *_, penalty = module._fused_loss(torch.tensor([0, 1, 0, 1] * 4), out, gen)
    assert penalty == 0  # far-apart means are not rewarded further


def test_cross_attention_respects_padding():
    block = CrossAttentionBlock(8, 2, dropout=0.0).eval()
    query = torch.randn(1, 3, 8)
    context = torch.randn(1, 3, 8)
    mask = torch.tensor([[False, False, True]])
    changed = context.clone()
    changed[0, 2] += 10
    torch.testing.assert_close(block(query, context, mask), block(query, changed, mask))


def test_wide_term_uses_the_neighbourhood_mean_and_ignores_padding():
    module = SpaCRDModule(n_genes=30, n_embed=16, n_heads=4, n_latent=6).eval()
    assert SpaCRDModule(n_genes=30, n_embed=16, n_heads=4, n_latent=6, wide=False).wide is None
    batch = _batch(with_image=False)
    batch[TENSOR_KEYS.PADDING_MASK][:, -1] = True
    inputs = module._get_inference_input(batch)
    with torch.no_grad():
        module.wide[1].weight.zero_()
        deep_only = module.inference(**inputs)["logits"]
        module.wide[1].weight[:, 0] = 1.0  # every member: the mean logit moves by the same
        with_wide = module.inference(**inputs)["logits"]
    # The wide term adds gene 0's mean over the unpadded neighbours (the last slot is padding).
    tokens = batch[TENSOR_KEYS.SPOT_GENES][batch[TENSOR_KEYS.NEIGHBORS]]
    expected = tokens[:, :-1, 0].mean(dim=1)
    torch.testing.assert_close(with_wide - deep_only, expected)


@pytest.mark.parametrize("n_hidden", [(), (32,)])
def test_evaluation_encodes_each_spot_once_with_the_same_outputs(n_hidden):
    """Encoding distinct spots once and gathering equals encoding every neighbourhood token."""
    module = SpaCRDModule(
        n_genes=30, n_image_features=8, n_hidden=n_hidden, n_embed=16, n_heads=4, n_latent=6
    )
    module.eval()
    batch = _batch()
    batch[TENSOR_KEYS.SPOT_HAS_IMAGE][::3] = False
    batch[TENSOR_KEYS.PADDING_MASK][-2:, -1] = True
    inputs = module._get_inference_input(batch)
    calls = []
    module.gene_encoder.register_forward_hook(
        lambda _m, args, _o: calls.append(args[0].reshape(-1, 30).shape[0])
    )
    module.inference(**inputs)
    assert calls == [40]  # the batch's 40 distinct spots, not its 16 x 5 tokens
    with torch.no_grad():
        h_once, _ = module._fuse(
            **{
                k: inputs[k]
                for k in ("spot_genes", "neighbors", "padding_mask", "spot_image", "spot_has_image")
            }
        )
        # reference: every neighbourhood token encoded and attended to on its own
        nb = batch[TENSOR_KEYS.NEIGHBORS]
        gene, image, _ = module._embed(
            batch[TENSOR_KEYS.SPOT_GENES][nb],
            batch[TENSOR_KEYS.SPOT_IMAGE][nb],
            batch[TENSOR_KEYS.SPOT_HAS_IMAGE][nb],
        )
        padding = batch[TENSOR_KEYS.PADDING_MASK]
        gene_guided = module.gene_guided_attention(gene[:, 0], image, padding)
        image_guided = module.image_guided_attention(image[:, 0], gene, padding)
        h_tokens = module.fusion(torch.cat([gene_guided, image_guided], dim=-1))
    torch.testing.assert_close(h_once, h_tokens, atol=1e-5, rtol=1e-5)


def test_training_token_path_and_evaluation_path_agree_without_dropout():
    module = SpaCRDModule(
        n_genes=30,
        n_image_features=8,
        n_embed=16,
        n_heads=4,
        n_latent=6,
        dropout=0.0,
        input_dropout=0.0,
        attention_dropout=0.0,
    )
    inputs = module._get_inference_input(_batch())
    with torch.no_grad():
        per_token = module.train().inference(**inputs)
        once = module.eval().inference(**inputs)
    torch.testing.assert_close(per_token["logits"], once["logits"], atol=1e-5, rtol=1e-5)


def test_cross_attention_is_multihead_attention_with_residual_and_norm():
    block = CrossAttentionBlock(16, 4, dropout=0.0).eval()
    query, context = torch.randn(5, 7, 16), torch.randn(5, 7, 16)
    mask = torch.zeros(5, 7, dtype=torch.bool)
    mask[2, 5:] = True
    expected = block.norm(query + block.attention(query, context, context, key_padding_mask=mask)[0])
    torch.testing.assert_close(block(query, context, mask), expected, atol=1e-6, rtol=1e-5)
    # keys and values projected per distinct spot and gathered equal those projected per token
    spots = torch.randn(12, 16)
    neighbors = torch.randint(0, 12, (5, 7))
    torch.testing.assert_close(
        block(query[:, 0], spots, mask, neighbors), block(query[:, 0], spots[neighbors], mask)
    )


def test_centre_query_equals_row_zero_of_full_attention():
    block = CrossAttentionBlock(16, 4, dropout=0.0).eval()
    query, context = torch.randn(5, 7, 16), torch.randn(5, 7, 16)
    mask = torch.zeros(5, 7, dtype=torch.bool)
    mask[3, 4:] = True
    torch.testing.assert_close(block(query[:, 0], context, mask), block(query, context, mask)[:, 0])


def test_token_mean_is_the_masked_mean():
    from spacrd.module._tokens import masked_mean as _masked_mean
    from spacrd.module._tokens import token_mean as _token_mean

    torch.manual_seed(0)
    tokens = torch.randn(10, 5, 30)
    padding = torch.zeros(10, 5, dtype=torch.bool)
    padding[:3, 2:] = True
    torch.testing.assert_close(_token_mean(tokens, padding), _masked_mean(tokens, padding))
    torch.testing.assert_close(_token_mean(tokens, None), _masked_mean(tokens, None))


def test_fusion_stage_inference_skips_the_classifier_and_keeps_the_fused_outputs():
    module = SpaCRDModule(n_genes=30, n_hidden=(32,), n_embed=16, n_heads=4, n_latent=6).train()
    inputs = module._get_inference_input(_batch(with_image=False))
    torch.manual_seed(1)
    full = module.inference(**inputs)
    torch.manual_seed(1)
    fused = module.inference(**inputs, classify=False)
    assert "logits" not in fused and "member_logits" not in fused
    for key in ("h", "qz_mean", "qz_log_var", "z"):
        torch.testing.assert_close(fused[key], full[key])
    _, _, loss = module(
        _batch(with_image=False), inference_kwargs={"classify": False}, loss_kwargs={"stage": "fuse"}
    )
    assert torch.isfinite(loss.loss)
