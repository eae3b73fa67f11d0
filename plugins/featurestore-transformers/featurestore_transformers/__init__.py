"""featurestore plugin: transformers vision backbones (DINOv2 family, ViT, MAE, CLIP vision)."""

__version__ = "0.1.0"
