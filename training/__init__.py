"""whaleid training: DenseNet121 + ArcFace on photos in the Kaggle 2019 layout (needs the ``train`` extra)."""
