"""The paper's reported results (its Table 1), which the About page, the reports and the model card set beside ours."""
from __future__ import annotations

# Top-1 (%) on CIFAR-10 at 224x224, ImageNet-pretrained timm students, ViT-Base teacher.
PAPER_TEACHER_TOP1 = 99.34
PAPER_TOP1 = {
    'ViT-Tiny': {'vit': 95.59, 'deit_hard': 96.39, 'advit_l1': 98.35, 'advit_l2': 98.06, 'advit_kl_paper': 96.17},
    'ViT-Small': {'vit': 96.34, 'deit_hard': 96.83, 'advit_l1': 99.00, 'advit_l2': 98.75, 'advit_kl_paper': 96.94},
}
