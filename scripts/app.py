#!/usr/bin/env python
"""The SADCL web tagger (Gradio) on localhost: upload or drop images, get their tags, move the threshold, see each
tag's attention map. Needs `pip install "sadcl-hf[app]"`.

    python scripts/app.py --model runs/demo/model [--port 7860]
    python scripts/app.py --model your-name/sadcl-r101-coco --examples photos/*.jpg
    python scripts/app.py --model runs/demo/model --backend onnx-int8 --max-file-size 5mb --max-batch-size 32

The page is `sadcl_hf.serving.web.build_app`; this script parses arguments and launches it.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

from sadcl_hf.cli import run_script
from sadcl_hf.serving.backends import BACKENDS
from sadcl_hf.serving.web import (
    DEFAULT_DELETE_CACHE,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_FILE_SIZE,
    WebTagger,
    build_app,
    default_examples,
)  # fmt: skip


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
    parser.add_argument(
        "--backend", choices=list(BACKENDS), default="pytorch",
        help="pytorch, or ONNX Runtime on the model folder's onnx/ graphs (scripts/export_onnx.py; no attention maps)",
    )  # fmt: skip
    parser.add_argument(
        "--max-file-size", default=DEFAULT_MAX_FILE_SIZE,
        help=f"largest upload accepted, e.g. 500kb, 20mb (default {DEFAULT_MAX_FILE_SIZE}); larger ones are refused",
    )  # fmt: skip
    parser.add_argument(
        "--delete-cache", type=int, nargs=2, metavar=("FREQUENCY", "AGE"), default=DEFAULT_DELETE_CACHE,
        help="every FREQUENCY seconds delete uploads older than AGE seconds (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help="most concurrent requests tagged in one forward (default: %(default)s)",
    )
    args = parser.parse_args()
    if args.max_batch_size < 1:
        parser.error(f"--max-batch-size must be >= 1, got {args.max_batch_size}")
    if min(args.delete_cache) < 1:
        parser.error(f"--delete-cache FREQUENCY AGE must be positive seconds, got {args.delete_cache}")
    if not re.fullmatch(r"\d+\s*(b|kb|mb|gb)", args.max_file_size, re.IGNORECASE):
        parser.error(f"--max-file-size must be a size such as 500kb or 20mb, got {args.max_file_size!r}")

    try:
        tagger = WebTagger(args.model, backend=args.backend)
    except (OSError, ValueError) as error:
        parser.error(f"--model {args.model}: {error}")
    examples = args.examples or default_examples(
        tagger.label_names, Path(tempfile.gettempdir()) / "sadcl-app-examples", args.num_examples
    )
    for path in examples:
        if not os.path.isfile(path):
            parser.error(f"--examples: no such file {path}")
    app = build_app(
        tagger, examples=examples, max_batch_size=args.max_batch_size, delete_cache=tuple(args.delete_cache)
    )
    app.queue().launch(
        server_name=args.host, server_port=args.port, ssr_mode=False, show_error=True, max_file_size=args.max_file_size
    )


if __name__ == "__main__":
    run_script(main)
