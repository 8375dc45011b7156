"""The core: models, [CLS]-attention capture and alignment, losses, data, augmentation, checkpoints and weights."""
