import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spacrd.nn import MLPEncoder
from spacrd.nn._blocks import Dropout, dropout


@pytest.mark.parametrize("p", [0.5, 0.25, 0.2, 0.9])
def test_cpu_dropout_keeps_each_element_with_one_minus_p_and_rescales(p):
    torch.manual_seed(0)
    x = torch.ones(400, 1000)
    out = dropout(x, p)
    kept = out != 0
    # every element is either dropped or scaled by 1 / (1 - p) (1 - p rounded to 2^-16 at most)
    np.testing.assert_allclose(out[kept].numpy(), 1.0 / (1.0 - p), rtol=1e-4)
    n = x.numel()
    share = kept.float().mean().item()
    assert abs(share - (1.0 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    # the mean is kept, as with torch's dropout
    assert abs(out.mean().item() - 1.0) < 5 * np.sqrt(p / (1 - p) / n)
    # no structure across rows or columns: masks of neighbouring rows are independent
    rows = kept.float()
    assert abs(torch.corrcoef(rows[:2])[0, 1].item()) < 0.2


def test_cpu_dropout_is_reproducible_under_the_torch_seed_and_differs_between_calls():
    x = torch.randn(64, 300)
    torch.manual_seed(3)
    a, b = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.5))
    assert not torch.equal(a, b)


def test_dropout_is_the_identity_in_evaluation_and_at_zero_and_passes_gradients_through_the_mask():
    x = torch.randn(8, 50, requires_grad=True)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    out = dropout(x, 0.5)
    out.sum().backward()
    assert x.grad is not None
    # the gradient is the mask itself: 0 where dropped, 1 / (1 - p) where kept
    torch.testing.assert_close(x.grad, (out.detach() != 0).float() * 2.0)
    assert torch.equal(dropout(x, 1.0), F.dropout(x, 1.0, True))


def test_dropout_module_keeps_the_state_and_modes_of_torch_dropout():
    module = Dropout(0.3)
    assert isinstance(module, torch.nn.Dropout) and module.p == 0.3
    module.eval()
    x = torch.randn(4, 6)
    assert torch.equal(module(x), x)
    # encoders built with it have the parameter names of earlier model files
    encoder = MLPEncoder(20, (8,), 4, dropout=0.2, input_dropout=0.5)
    assert list(encoder.state_dict()) == [
        "net.1.weight",
        "net.1.bias",
        "net.2.weight",
        "net.2.bias",
        "net.2.running_mean",
        "net.2.running_var",
        "net.2.num_batches_tracked",
        "net.5.weight",
        "net.5.bias",
    ]
