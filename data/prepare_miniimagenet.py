"""Resizes MiniImagenet (Ravi & Larochelle split) to 84x84 for MAML: `miniImagenet/{train,val,test}/<class>/*.jpg`.

Usage (from the repository root):

  python data/prepare_miniimagenet.py --source DIR --out data/miniImagenet

DIR holds `train.csv`, `val.csv` and `test.csv` (header `filename,label`) and
the folder `images/` with the original images named as in the CSVs (the layout
the original `proc_images.py` expects); `--images` points elsewhere for the
images. The source images are read, never moved or modified. See
`maml_tf/data/prepare.py`.
"""

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from anywhere.
from maml_tf.data import prepare  # noqa: E402  (Pillow and numpy only: no TensorFlow start-up)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="folder with train.csv, val.csv, test.csv (and images/)")
    parser.add_argument("--images", default=None, help="folder of the original images (default: SOURCE/images)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "miniImagenet"),
                        help="output folder (default: data/miniImagenet)")
    parser.add_argument("--size", type=int, default=prepare.MINIIMAGENET_SIZE, help="output width and height")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--workers", type=int, default=prepare.default_workers(),
                        help="resizing processes (default: the usable CPU cores)")
    args = parser.parse_args(argv)
    images = args.images if args.images is not None else str(Path(args.source) / "images")
    try:
        prepare.prepare_miniimagenet(args.source, images, args.out, size=args.size,
                                     overwrite=args.overwrite, workers=args.workers)
    except (prepare.PreparationError, OSError) as e:  # Expected failures: a message, no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
