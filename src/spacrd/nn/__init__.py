from ._blocks import CrossAttentionBlock, GaussianEncoder, MLPDecoder, MLPEncoder, ShiftedSparse

__all__ = ["CrossAttentionBlock", "GaussianEncoder", "MLPDecoder", "MLPEncoder", "ShiftedSparse"]
