import torch

from spacrd.nn import CrossAttentionBlock


def test_training_centre_attention_equals_scaled_dot_product_attention_without_dropout():
    torch.manual_seed(0)
    block = CrossAttentionBlock(16, n_heads=4, dropout=0.0)
    query, context = torch.randn(12, 16), torch.randn(12, 5, 16)
    padding = torch.zeros(12, 5, dtype=torch.bool)
    padding[:4, 3:] = True
    block.train()
    trained = block(query, context, padding_mask=padding)
    block.eval()
    torch.testing.assert_close(trained, block(query, context, padding_mask=padding))
    # padded slots carry no weight: changing them changes nothing
    block.train()
    moved = context.clone()
    moved[:4, 3:] += 100.0
    torch.testing.assert_close(block(query, moved, padding_mask=padding), trained)


def test_training_attention_dropout_drops_weights():
    torch.manual_seed(0)
    block = CrossAttentionBlock(16, n_heads=4, dropout=0.5).train()
    query, context = torch.randn(64, 16), torch.randn(64, 5, 16)
    a, b = block(query, context), block(query, context)
    assert not torch.allclose(a, b)
    block.eval()
    torch.testing.assert_close(block(query, context), block(query, context))
