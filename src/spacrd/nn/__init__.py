from ._blocks import CrossAttentionBlock, GaussianEncoder, MLPDecoder, MLPEncoder

__all__ = ["CrossAttentionBlock", "GaussianEncoder", "MLPDecoder", "MLPEncoder"]
