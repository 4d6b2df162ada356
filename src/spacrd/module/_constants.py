"""Keys of the tensors that flow between the data loader, the module and the training plan."""

from typing import NamedTuple


class _SpaCRDTensorKeys(NamedTuple):
    GENE_TOKENS: str = "gene_tokens"
    IMAGE_TOKENS: str = "image_tokens"
    IMAGE_MASK: str = "image_mask"
    PADDING_MASK: str = "padding_mask"
    LABELS: str = "labels"


TENSOR_KEYS = _SpaCRDTensorKeys()

#: Label code of spots without a pathologist label; they take part in stage I only.
UNLABELLED = -1
