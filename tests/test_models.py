import pytest
import torch

from geodesic_core import InputError, build_model, check_model_name


@pytest.mark.parametrize("name,c,size,k,n_params", [
    ("lenet300", 1, 28, 10, 266_610), ("cnn", 1, 28, 10, None), ("vgg11", 3, 32, 10, None),
    ("vgg16", 3, 32, 100, None), ("resnet164", 3, 32, 10, None),
])
def test_models_map_images_to_logits(name, c, size, k, n_params):
    torch.manual_seed(0)
    model = build_model(name, k, c, size).eval()
    out = model(torch.randn(2, c, size, size))
    assert out.shape == (2, k) and torch.isfinite(out).all()
    if n_params:
        assert sum(p.numel() for p in model.parameters()) == n_params


def test_resnet164_depth():
    model = build_model("resnet164", 10, 3, 32)
    blocks = list(model.blocks)
    assert len(blocks) == 54  # 3 stages x 18 bottlenecks x 3 layers + 2 = 164


def test_unknown_model_lists_valid_names():
    with pytest.raises(InputError, match="valid models: cnn, lenet300"):
        check_model_name("resnet18")
