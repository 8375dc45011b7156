"""ADViT: attention distillation for Vision Transformers.

Importing the package registers the CIFAR-native models with timm.
"""
from .core import cnn, models  # noqa: F401  (registers models with timm)

__version__ = '0.1.0'
