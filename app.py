"""ADViT Studio app: placeholder until the Gradio app lands (issue #3).

Until then the training core is used from the command line: see README.md.
"""
import sys

if __name__ == '__main__':
    print('ADViT Studio: the Gradio app is not built yet (issue #3). '
          'Use the command line meanwhile: `advit train --help`, `advit eval --help`.', file=sys.stderr)
    sys.exit(1)
