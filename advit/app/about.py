"""The app's About page: the method, the losses, our bundle's results and the paper's, each with its setting."""
from __future__ import annotations

from pathlib import Path

from ..measure.evaluate import TEST_IMAGES
from ..measure.removal import REMOVED_AS
from ..measure.verdicts import HEADLINE_MAPS, HEADLINE_PROTOCOL, describe_drop
from ..results.bundle import EARLIER, bundle_seeds_tables, seeds_evidence
from ..results.paper import PAPER_TEACHER_TOP1, PAPER_TOP1
from .catalog import ModelEntry
from .names import model_label

METHOD_COLUMNS = ('vit', 'deit_hard', 'advit_l1', 'advit_l2', 'advit_kl_paper', 'advit_kl', 'advit_relevance')

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
| `advit_relevance` | CE + mean over layers of Σ over patches \\|A_s − R_t\\|, R_t the teacher's gradient-weighted [CLS] attention: per layer the heads' mean of (∂y/∂A ⊙ A)⁺, y the true class's logit (Chefer et al. 2021). Not in the paper: the student learns what the teacher's decision uses, not only where it looks |

The Attention tab shows the maps exactly as the loss compares them: heads fused, the teacher's layer
mapped to each student layer and resampled to the student's patch grid.
"""


FAITHFULNESS = f"""\
**Are the maps about what the model uses?** Faithfulness, on a fixed random {TEST_IMAGES} test images: the
patches a map attends to most are removed first ({REMOVED_AS[HEADLINE_PROTOCOL]}, which puts nothing out of
distribution into a ViT; a model's card also gives the pixels set to the mean and blurred) and the accuracy lost
is compared with removing patches in a random order. The number is the **quarter drop**: points of
accuracy lost by removing the map's top quarter of patches beyond those lost by removing a random
quarter, with its standard error over the images. Positive: the map points at patches the model
needs; within two standard errors of 0: no better than chance; negative: it points away from them.
It says what the model uses, which may be background rather than the object a person would point at.
Shown for the last layer's [CLS] map, for rollout, and for gradient rollout (attention weighted by the
gradient of the predicted class's score, Chefer et al. 2021: the map that asks what the model used;
in the app's More views); the model card has every layer and the full deletion and insertion curves.
"""


def paper_table() -> str:
    header = '| student | ' + ' | '.join(c for c in METHOD_COLUMNS) + ' |\n|' + ' --- |' * (len(METHOD_COLUMNS) + 1)
    rows = [f'| {student} | ' + ' | '.join(f'{scores[c]:.2f}' if c in scores else '–' for c in METHOD_COLUMNS) + ' |'
            for student, scores in PAPER_TOP1.items()]
    return '\n'.join([header, *rows])


def bundle_table(entries: list[ModelEntry]) -> str:
    """Our usable checkpoints: name, file, validation and test top-1, the faithfulness of the maps (last
    layer, rollout and gradient rollout), size, from their metadata and evaluation files."""
    def number(value: float | None) -> str:
        return f'{value:.2f}' if value is not None else '–'
    rows = []
    for e in entries:
        if e.usable and e.test_top1 is not None:
            drops = e.faithfulness()
            faithful = ' | '.join(describe_drop(drops[source]) if drops.get(source, {}).get('quarter_drop')
                                  is not None else '–' for source in HEADLINE_MAPS)
            rows.append(f"| {model_label(e.key, e.meta)} | `{e.name}` | "
                        f"{number(e.meta.get('val_top1'))} | {number(e.test_top1)} | {faithful} | "
                        f"{e.meta.get('params', 0) / 1e6:.1f}M |")
    if not rows:
        return 'No evaluated checkpoints yet: the bundle goes in `checkpoints/`, runs in `runs/`.'
    return '\n'.join(['| model | checkpoint | validation top-1 (%) | test top-1 (%) | ' +
                      ' | '.join(f'faithfulness, {source} (pts)' for source in HEADLINE_MAPS) + ' | params |',
                      '|' + ' --- |' * (5 + len(HEADLINE_MAPS)), *rows])


def about_markdown(entries: list[ModelEntry], bundle: Path | None = None) -> str:
    """The About page: the method, our models (and, from the ``bundle`` folder, its students over seeds), the
    paper's results."""
    evidence = (seeds_evidence(bundle) or bundle) if bundle is not None and bundle.is_dir() else None
    over_seeds = bundle_seeds_tables(evidence, METHOD_COLUMNS) if evidence is not None else None
    whose = ('The bundle\'s students' if evidence == bundle else
             f'The earlier bundle\'s students (the quick recipe, kept in `{EARLIER}/` of the bundle; the bundle itself is '
             'one seed of a longer recipe)')
    return '\n\n'.join([
        METHOD,
        '## Our models\n\nTop-1 on the test split of the data each was evaluated on (for CIFAR-10 here: '
        'the JPEG q75 copy, 32x32, trained from scratch), and on the held-out training images each checkpoint '
        'was chosen on (validation). The bundle\'s model card, `checkpoints/README.md`, says how each was made.',
        FAITHFULNESS,
        bundle_table(entries),
        *([f'### {whose} over seeds\n\nThe same recipe, the seed the only difference (the card\'s '
           'Tables 1 and 2 over seeds): mean and standard deviation of each method over its seeds.', over_seeds]
          if over_seeds else []),
        '## The paper\'s results\n\nTop-1 (%) on CIFAR-10 at 224x224, students fine-tuned from ImageNet-pretrained '
        f'timm weights, ViT-Base teacher at {PAPER_TEACHER_TOP1}%. Not comparable with ours: other resolution, '
        'pretraining and budget.',
        paper_table(),
    ])
