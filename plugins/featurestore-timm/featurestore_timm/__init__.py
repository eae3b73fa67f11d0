"""featurestore plugin: timm image backbones (CNNs and ViTs), named ones and the ``timm:`` family."""

__version__ = "0.1.0"
