#!/usr/bin/env python
"""The SADCL web tagger (Gradio) on localhost: upload or drop images, get their tags, move the threshold, see each
tag's attention map. Needs `pip install "sadcl-hf[app]"`.

    python scripts/app.py --model runs/demo/model [--port 7860]
    python scripts/app.py --model your-name/sadcl-r101-coco --examples photos/*.jpg

The page is `sadcl_hf.app.build_app`; this script parses arguments and launches it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from sadcl_hf.app import Tagger, build_app, default_examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="sadcl-hf model folder, converted checkpoint or Hub id")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="interface to serve on (0.0.0.0: every interface)")
    parser.add_argument("--examples", nargs="+", default=None, help="example image files (default: see below)")
    parser.add_argument(
        "--num-examples",
        type=int,
        default=8,
        help="without --examples: this many digits-mosaic test images, for a model whose labels are the digits",
    )
    args = parser.parse_args()

    tagger = Tagger(args.model)
    examples = args.examples or default_examples(
        tagger.label_names, Path(tempfile.gettempdir()) / "sadcl-app-examples", args.num_examples
    )
    for path in examples:
        if not os.path.isfile(path):
            parser.error(f"--examples: no such file {path}")
    app = build_app(tagger, examples=examples)
    app.queue().launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=True)


if __name__ == "__main__":
    main()
