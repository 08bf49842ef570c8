"""Neuron alignment (`geodesic_core.align`): w_2's hidden units permuted to match w_1's, its function unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

from geodesic_core import InputError, TrainConfig, build_model, flat_params, load_split, train
from geodesic_core.align import _permute, align_to, check_alignable, permutation_groups
from geodesic_core.connect import ConnectConfig
from geodesic_core.data import Split

NETS = [("lenet300", {}, (1, 28)), ("cnn", {}, (1, 28)), ("vgg11", {"width": 0.125}, (3, 32)),
        ("resnet164", {"depth": 20, "width": 0.25}, (3, 32))]


def _net(name, arch, shape, seed):
    return build_model(name, 10, shape[0], shape[1], seed=seed, **arch)


def _scrambled(net, x, seed):
    """A copy of ``net`` with every hidden layer's units in a random order (the same function)."""
    out = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(seed)
    for g in permutation_groups(out, x):
        _permute(g, torch.randperm(g.units, generator=gen))
    return out


@pytest.mark.parametrize("name,arch,shape", NETS)
def test_a_scrambled_copy_is_put_back_in_order(name, arch, shape):
    """B = A with its units shuffled: B computes A's function, its weights differ; aligning B to A recovers A's
    weights exactly, batch-norm buffers included (units whose outputs never vary, dead ReLUs of the random
    network, by their correlation before the activation)."""
    a = _net(name, arch, shape, 0)
    if name in ("vgg11", "resnet164"):  # non-trivial batch-norm statistics: a misplaced buffer changes the function
        a.train()
        with torch.no_grad():
            a(torch.randn(64, *shape[:1], shape[1], shape[1]))
    x = torch.randn(300, shape[0], shape[1], shape[1])
    b = _scrambled(a, x, 1)
    a.eval(), b.eval()
    torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-5)
    assert not torch.equal(flat_params(b), flat_params(a))
    info = align_to(a, b, x)
    assert info["mean_correlation_after"] > 0.75 > 0.5 > info["mean_correlation_before"]  # dead units correlate 0
    assert info["moved"] > 0 and info["layers"] == len(permutation_groups(a, x))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        if va.is_floating_point():
            torch.testing.assert_close(vb, va, msg=k)


@pytest.fixture(scope="module")
def mnist_pair(data_dir):
    tr = load_split("mnist", True, data_dir)
    tr = Split(tr.x[:3000], tr.y[:3000])
    nets = [build_model("cnn", 10, 1, 28, seed=s) for s in (0, 1)]
    for s, net in enumerate(nets):
        train(net, tr, TrainConfig(epochs=1, lr=0.05, seed=s), device=torch.device("cpu"))
    return nets, tr


def test_two_trained_networks_align_without_changing_the_function(mnist_pair):
    """Two CNNs trained from different seeds: alignment keeps B's outputs (to round-off), raises the mean unit
    correlation, and brings B closer to A in weight space."""
    (a, b0), tr = mnist_pair
    b = copy.deepcopy(b0)
    x = tr.x[:1000]
    info = align_to(a, b, x)
    b.eval(), b0.eval()
    torch.testing.assert_close(b(tr.x[1000:1500]), b0(tr.x[1000:1500]), rtol=1e-5, atol=1e-5)
    assert info["mean_correlation_after"] > info["mean_correlation_before"] + 0.2
    wa = flat_params(a)
    assert float((flat_params(b) - wa).norm()) < float((flat_params(b0) - wa).norm())


class _Skip(torch.nn.Module):
    """A network with a skip connection that the chain rules would misread: h + relu(l2(h)) ties l2's units to l1's."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.out = torch.nn.Linear(6, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.l1(x))
        return self.out(h + torch.relu(self.l2(h)))


def test_networks_it_cannot_align_are_refused_and_left_alone():
    """A skip connection outside the pre-activation ResNet's known structure is caught by the function check, with an
    error that names the way out, and nothing of B changes; two architectures that differ are refused too."""
    a, b = _Skip(), _Skip()
    x = torch.randn(64, 6)
    kept = copy.deepcopy(b.state_dict())
    with pytest.raises(InputError, match="not a chain.*--align none"):
        check_alignable(b, x)
    with pytest.raises(InputError, match="--align none"):
        align_to(a, b, x)
    for k, v in b.state_dict().items():
        assert torch.equal(v, kept[k])
    with pytest.raises(InputError, match="not the same architecture"):
        align_to(_net("vgg11", {"width": 0.125}, (3, 32), 0), _net("vgg11", {"width": 0.25}, (3, 32), 0),
                 torch.randn(4, 3, 32, 32))


def test_the_flow_decides_alignment_before_any_work(data_dir):
    """auto aligns the networks it can and skips the others with the reason (torchvision's ResNet-18 calls one ReLU
    module several times); activations refuses those."""
    from tasks.connect import alignment_plan

    assert alignment_plan(ConnectConfig(model="cnn", dataset="fashion_mnist"), data_dir) is None
    assert alignment_plan(ConnectConfig(model="resnet164", dataset="cifar10", depth=11, width=0.25), data_dir) is None
    assert alignment_plan(ConnectConfig(model="cnn", align="none"), data_dir) == "align none"
    other = dict(model="torchvision:resnet18", dataset="mnist")
    assert "--align none" in alignment_plan(ConnectConfig(**other), data_dir)
    with pytest.raises(InputError, match="neuron alignment supports"):
        alignment_plan(ConnectConfig(**other, align="activations"), data_dir)
