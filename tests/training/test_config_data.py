"""Config loading and the split by identity."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from index.labels import Photo, read_labels, split_by_identity
from index.ranking import NEW_WHALE
from training.config import load_config
from training.data import class_map


def test_config_rejects_typos_and_applies_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 0.01\n  batch_sise: 8\n")
    with pytest.raises(ConfigError, match="batch_sise.*did you mean 'batch_size'"):
        load_config(p)
    p.write_text("optim:\n  lr: 0.01\n")
    cfg = load_config(p, ["optim.batch_size=8", "stages.0.epochs=2.5", "model.input_size=[32, 64]"])
    assert cfg.optim.lr == 0.01 and cfg.optim.batch_size == 8 and cfg.stages[0].epochs == 2.5
    assert cfg.model.input_size == [32, 64]
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(None, ["optim.batch_size=eight"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config(None, ["head.kind=softmax"])


def test_repo_configs_load():
    for name in ("cpu-small", "kaggle-densenet121"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.model.backbone == "densenet121" and cfg.head.margin_rad == 0.5
        assert cfg.optim.weight_decay == 5e-4 and cfg.model.dropout == 0.5
    assert load_config("configs/kaggle-densenet121.yaml").model.input_size == [256, 512]
    senet = load_config("configs/kaggle-senet154-binary.yaml")
    assert senet.model.backbone == "legacy_senet154" and senet.head.kind == "binary"
    assert senet.model.input_size == [256, 512]


def test_read_labels_both_layouts(tmp_path):
    (tmp_path / "k.csv").write_text("Image,Id\na.jpg,w_1\nb.jpg,new_whale\n")
    (tmp_path / "o.csv").write_text("image,whale_id,source_repo\na.jpg,w_1,x\nc.jpg,unknown,y\n")
    assert read_labels(tmp_path / "k.csv") == [("a.jpg", "w_1"), ("b.jpg", NEW_WHALE)]
    assert read_labels(tmp_path / "o.csv") == [("a.jpg", "w_1")]
    (tmp_path / "bad.csv").write_text("file,label\n")
    with pytest.raises(ConfigError, match="columns"):
        read_labels(tmp_path / "bad.csv")


def _photos():
    photos = []
    for i in range(40):
        n = 1 + i % 4
        photos += [Photo(f"{i}_{j}.jpg", f"w{i}") for j in range(n)]
    photos += [Photo(f"nw{j}.jpg", NEW_WHALE) for j in range(10)]
    photos += [Photo("p.jpg", "w0", pseudo=True)]
    return photos


def test_split_by_identity():
    split = split_by_identity(
        _photos(), val_open_fraction=0.25, val_closed_fraction=1.0, val_new_whale_fraction=0.5, seed=3
    )
    train_ids = {p.whale_id for p in split.train}
    open_ids = {p.whale_id for p in split.val_open}
    assert len(open_ids) == 10 and not (open_ids & train_ids)
    # every known identity with >= 2 photos lost exactly one photo, and kept at least one
    for p in split.val_closed:
        assert p.whale_id in train_ids
    assert len({p.whale_id for p in split.val_closed}) == len(split.val_closed)
    assert len(split.val_new_whale) == 5
    assert NEW_WHALE not in train_ids
    assert any(p.pseudo for p in split.train) and not any(p.pseudo for p, _ in split.queries())
    again = split_by_identity(_photos(), 0.25, 1.0, 0.5, seed=3)
    assert again == split
    total = len(split.train) + len(split.queries()) + (10 - 5)
    assert total == len(_photos())


def test_class_map_doubles_with_flips():
    photos = [Photo("a", "w1"), Photo("b", "w1"), Photo("c", "w2"), Photo("d", NEW_WHALE)]
    cm = class_map(photos, min_images=1, flip=True)
    assert cm.identities == ("w1", "w2") and cm.num_classes == 4
    samples = cm.samples(photos)
    assert [(p.image, c, f) for p, c, f in samples] == [
        ("a", 0, False),
        ("a", 2, True),
        ("b", 0, False),
        ("b", 2, True),
        ("c", 1, False),
        ("c", 3, True),
    ]
    assert class_map(photos, min_images=2, flip=False).identities == ("w1",)
