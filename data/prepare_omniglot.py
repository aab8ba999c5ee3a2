"""Resizes Lake's Omniglot release to 28x28 for MAML: `omniglot_resized/<alphabet>/<character>/*.png`.

Usage (from the repository root):

  python data/prepare_omniglot.py --source DIR --out data/omniglot_resized

DIR holds `images_background.zip` and `images_evaluation.zip` (or the extracted
folders) from github.com/brendenlake/omniglot (folder `python/`). The images
are converted to 8-bit greyscale before the LANCZOS resize (antialiased);
`--binary` keeps the original's binary images. See `maml_tf/data/prepare.py`.
"""

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from anywhere.
from maml_tf.data import prepare  # noqa: E402  (Pillow and numpy only: no TensorFlow start-up)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True,
                        help="folder with images_background(.zip) and images_evaluation(.zip)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "omniglot_resized"),
                        help="output folder (default: data/omniglot_resized)")
    parser.add_argument("--size", type=int, default=prepare.OMNIGLOT_SIZE, help="output width and height")
    parser.add_argument("--binary", action="store_true",
                        help="the original's binary images: resize the 1-bit PNGs as they are "
                             "(Pillow then uses NEAREST instead of LANCZOS)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--workers", type=int, default=prepare.default_workers(),
                        help="resizing processes (default: the usable CPU cores)")
    args = parser.parse_args(argv)
    try:
        sources = prepare.find_omniglot_sources(args.source)
        prepare.prepare_omniglot(sources, args.out, size=args.size, binary=args.binary,
                                 overwrite=args.overwrite, workers=args.workers)
    except (prepare.PreparationError, OSError) as e:  # Expected failures: a message, no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
