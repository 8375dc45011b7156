"""The app's About page: the method, the losses, our bundle's results and the paper's, each with its setting."""
from __future__ import annotations

from .catalog import ModelEntry
from .names import model_label

# Paper Table 1, top-1 on CIFAR-10 at 224x224, ImageNet-pretrained timm students, ViT-Base teacher.
PAPER_TEACHER_TOP1 = 99.34
PAPER_TOP1 = {
    'ViT-Tiny': {'vit': 95.59, 'deit_hard': 96.39, 'advit_l1': 98.35, 'advit_l2': 98.06, 'advit_kl_paper': 96.17},
    'ViT-Small': {'vit': 96.34, 'deit_hard': 96.83, 'advit_l1': 99.00, 'advit_l2': 98.75, 'advit_kl_paper': 96.94},
}
METHOD_COLUMNS = ('vit', 'deit_hard', 'advit_l1', 'advit_l2', 'advit_kl_paper', 'advit_kl')

METHOD = """\
## The method

ADViT ("Attention Distillation for Accuracy Improvement of Vision Transformer") trains a small ViT
student from a larger ViT teacher. Besides cross-entropy, in every layer the student's attention of
the [CLS] query over the patch tokens (heads averaged, since head counts differ) is pulled towards
the teacher's, and the per-layer distances are averaged over layers.

| method | loss |
| --- | --- |
| `vit` | cross-entropy |
| `deit_hard` | 0.5 CE(label) + 0.5 CE(teacher's argmax) |
| `advit_l1` | CE + mean over layers of Σ over patches \\|A_s − A_t\\| |
| `advit_l2` | CE + mean over layers of Σ over patches (A_s − A_t)² |
| `advit_kl_paper` | CE + KL of softmax(A/τ) of both maps, as the paper prints it: the softmax flattens maps that are already distributions |
| `advit_kl` | CE + KL(A_t ‖ A_s) on the distributions themselves |

The Attention tab shows the maps exactly as the loss compares them: heads fused, the teacher's layer
mapped to each student layer and resampled to the student's patch grid.
"""


def paper_table() -> str:
    header = '| student | ' + ' | '.join(c for c in METHOD_COLUMNS) + ' |\n|' + ' --- |' * (len(METHOD_COLUMNS) + 1)
    rows = [f'| {student} | ' + ' | '.join(f'{scores[c]:.2f}' if c in scores else '–' for c in METHOD_COLUMNS) + ' |'
            for student, scores in PAPER_TOP1.items()]
    return '\n'.join([header, *rows])


def bundle_table(entries: list[ModelEntry]) -> str:
    """Our usable checkpoints: name, file, validation and test top-1, size, from their metadata."""
    def percent(value: float | None) -> str:
        return f'{value:.2f}' if value is not None else '–'
    rows = [f"| {model_label(e.key, dict(e.meta, test_top1=None))} | `{e.name}` | {percent(e.meta.get('val_top1'))} | "
            f"{percent(e.meta['test_top1'])} | {e.meta.get('params', 0) / 1e6:.1f}M |"
            for e in entries if e.usable and e.meta.get('test_top1') is not None]
    if not rows:
        return 'No evaluated checkpoints yet: the bundle goes in `checkpoints/`, runs in `runs/`.'
    return '\n'.join(['| model | checkpoint | validation top-1 (%) | test top-1 (%) | params |',
                      '| --- | --- | --- | --- | --- |', *rows])


def about_markdown(entries: list[ModelEntry]) -> str:
    return '\n\n'.join([
        METHOD,
        '## Our models\n\nTop-1 on the test split of the data each was evaluated on (for CIFAR-10 here: '
        'the JPEG q75 copy, 32x32, trained from scratch), and on the held-out training images each checkpoint '
        'was chosen on (validation). The bundle\'s model card, `checkpoints/README.md`, says how each was made.',
        bundle_table(entries),
        '## The paper\'s results\n\nTop-1 (%) on CIFAR-10 at 224x224, students fine-tuned from ImageNet-pretrained '
        f'timm weights, ViT-Base teacher at {PAPER_TEACHER_TOP1}%. Not comparable with ours: other resolution, '
        'pretraining and budget.',
        paper_table(),
    ])
