"""EmbeddingNet and the heads: shapes, gradients, and ArcFace against its formula."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from core.errors import ConfigError
from training.config import ModelConfig
from training.heads import ArcMargin, BinaryHead, MarginHead, build_head
from training.model import EmbeddingNet, build_embedding_net, create_backbone, freeze_prefixes


@pytest.mark.parametrize("backbone", ["densenet121", "test_resnet", "mobilenetv3_small_050"])
def test_embedding_net_shape_norm_and_gradients(backbone):
    torch.manual_seed(0)
    net = build_embedding_net(ModelConfig(backbone=backbone, embedding_dim=32, input_size=[32, 64]))
    assert [type(m).__name__ for m in net.neck] == ["BatchNorm1d", "Dropout", "Linear", "BatchNorm1d"]
    assert net.neck[1].p == 0.5
    x = torch.randn(4, 3, 32, 64)
    out = net(x)
    assert out.shape == (4, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    head = MarginHead(32, 5)
    loss, _ = head(net.features(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in params)
    zero = [n for n, p in params if not p.grad.abs().sum()]
    if backbone != "test_resnet":
        assert not zero, zero[:5]
    else:  # timm ResNets zero-initialise each block's last BN: its branch gets gradients from step 2 on
        assert all(".layer" in n for n in zero), zero[:5]
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_unknown_backbone_lists_close_names():
    with pytest.raises(ConfigError, match="densenet121"):
        create_backbone("densenet12")


def test_pretrained_weights_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    src = timm.create_model("test_resnet", num_classes=0)
    path = tmp_path / "weights.pth"
    torch.save(src.state_dict(), path)
    loaded = create_backbone("test_resnet", str(path))
    for (n, a), (_, b) in zip(src.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone("test_resnet", str(tmp_path / "missing.pth"))


def test_offline_hub_falls_back_to_random_init(caplog):
    # HF_HUB_OFFLINE=1 (conftest): the hub is unreachable at once, so a warning and random weights
    m = create_backbone("test_resnet", True)
    assert m.num_features == 96
    assert "random init" in caplog.text or "could not load pretrained" in caplog.text


def test_freeze_prefixes():
    net = EmbeddingNet(create_backbone("test_resnet"), 16)
    n = freeze_prefixes(net, ["conv1"])
    assert n > 0
    assert all(not p.requires_grad for name, p in net.backbone.named_parameters() if name.startswith("conv1"))
    assert all(p.requires_grad for p in net.neck.parameters())
    with pytest.raises(ConfigError, match="matches no backbone parameter"):
        freeze_prefixes(net, ["no_such_block"])


def test_arcface_logits_by_hand():
    head = MarginHead(2, 2, scale=10.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    theta = 0.6
    emb = torch.tensor([[math.cos(theta), math.sin(theta)]])
    loss, cos = head(emb, torch.tensor([0]))
    # target logit s*cos(theta + m), other s*cos(pi/2 - theta) = s*sin(theta)
    target, other = 10 * math.cos(theta + 0.5), 10 * math.sin(theta)
    expected = -target + math.log(math.exp(target) + math.exp(other))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert cos[0, 0].item() == pytest.approx(math.cos(theta), rel=1e-6)


def test_arcface_fallback_beyond_pi():
    # theta + m > pi: cos(theta) - m*sin(m) keeps the logit monotonic
    cos = torch.tensor([math.cos(3.0)])
    assert ArcMargin()(cos, 0.5).item() == pytest.approx(math.cos(3.0) - 0.5 * math.sin(0.5), rel=1e-6)


@pytest.mark.parametrize("kind", ["arcface", "cosface", "binary"])
def test_heads_finite_at_cos_plus_minus_one(kind):
    head = build_head(kind, 3, 2, scale=30.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]))
    emb = torch.tensor([[2.0, 0.0, 0.0], [-3.0, 0.0, 0.0]], requires_grad=True)
    # row 0: cos = +1 with its class and -1 with the other; row 1 the opposite
    loss, _ = head(emb, torch.tensor([0, 0]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


def test_binary_head_targets():
    head = BinaryHead(2, 3, scale=1.0)
    loss, logits = head(torch.randn(4, 2), torch.tensor([0, 2, -1, 1]))
    assert logits.shape == (4, 3) and torch.isfinite(loss)
