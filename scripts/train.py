#!/usr/bin/env python
"""Train SADCL on any supported dataset, on CPU, one GPU or many (`accelerate launch scripts/train.py ...`).

    python scripts/train.py --config configs/demo.yaml [--field value ...]
    accelerate launch --multi_gpu --num_processes 8 scripts/train.py --config configs/coco2014-r101-448.yaml

Arguments come from `--config FILE` (YAML/JSON) and/or the command line (the command line wins); `--help` lists
them (the SADCL model, data and training options first, then `transformers.TrainingArguments`). Writes
checkpoints, `OUTPUT_DIR/model`, `all_results.json`, `train_log.json` and `train.log` to `--output_dir`.
"""

import logging
from pathlib import Path

from huggingface_hub.utils import logging as hub_logging
from transformers.utils import logging as hf_logging

from sadcl_hf.cli import run_script
from sadcl_hf.training.recipe import parse_arguments, run_training


def main() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # huggingface_hub has its own stderr handler and also propagates to the root one: each of its lines came twice.
    hub_logging.disable_propagation()
    model_args, data_args, training_args = parse_arguments()
    hf_logging.set_verbosity(training_args.get_process_log_level())
    run_training(model_args, data_args, training_args)
    if training_args.should_log:  # the metrics were logged as they came; this says where they are kept
        output_dir = Path(training_args.output_dir)
        print(f"model: {output_dir / 'model'}")
        print(f"metrics: {output_dir / 'all_results.json'}, log: {output_dir / 'train.log'}")


if __name__ == "__main__":
    run_script(main)
