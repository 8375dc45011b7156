"""The short CPU runs behind the bundle's recipe: each model at an equal wall-time budget.

    python scripts/cpu_sweep.py --seconds 300 vit_tiny6_convstem_32 vit_mini4_convstem_32 ...

Each entry is a timm model name, optionally with ``:flag=value,...`` run settings (e.g.
``vit_mini4_convstem_32:lr=0.003``); every run starts from the ``bundle-teacher`` preset (method
``vit``). Results are appended to ``runs/sweep/sweep.jsonl`` (model, settings, wall time, images/s,
best validation top-1 and the quarter drops of that checkpoint's maps on the validation probe images,
test top-1 of the selected checkpoint, recorded, never used to choose); ``advit bundle`` copies them
into the model card.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from advit.training.presets import preset  # noqa: E402
from advit.core.data import default_dataset  # noqa: E402
from advit.core.checkpoint import read_metadata  # noqa: E402
from advit.measure.evaluate import read_evaluation  # noqa: E402
from advit.training.train import TrainConfig, train  # noqa: E402


def parse_entry(entry: str) -> tuple[str, dict]:
    model, _, settings = entry.partition(':')
    values = {}
    for item in filter(None, settings.split(',')):
        key, _, value = item.partition('=')
        values[key] = json.loads(value)
    return model, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('entries', nargs='+', help='MODEL or MODEL:key=value,...')
    parser.add_argument('--seconds', type=float, default=300, help='wall-time budget of each run')
    parser.add_argument('--out', default='runs/sweep')
    parser.add_argument('--data', default=default_dataset())
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for entry in args.entries:
        model, settings = parse_entry(entry)
        name = re.sub(r'[^\w.-]+', '_', entry)  # a folder name of the entry
        values = dict(preset('bundle-teacher'), model=model, out=str(out / name), data=args.data,
                      time_budget=args.seconds)
        values.update(settings)  # e.g. steps=660,time_budget=null: a run by steps, unmoved by other work beside it
        start = time.time()
        run = train(TrainConfig.from_dict(values))
        wall = time.time() - start
        lines = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
        speeds = [line['images_per_s'] for line in lines if line['event'] == 'train']
        evals = [line for line in lines if line['event'] == 'eval']
        test = read_evaluation(run / 'best.safetensors')['top1']
        record = dict(model=model, settings=settings, seconds=args.seconds, wall_s=round(wall, 1),
                      images_per_s=round(statistics.median(speeds), 1),
                      best_val_top1=max(line['val_top1'] for line in evals),
                      val_faithfulness=read_metadata(run / 'best.safetensors').get('val_faithfulness'), test_top1=test,
                      curve=[(line['step'], line['val_top1']) for line in evals])
        with open(out / 'sweep.jsonl', 'a') as f:
            f.write(json.dumps(record) + '\n')
        print(json.dumps(record), flush=True)


if __name__ == '__main__':
    main()
