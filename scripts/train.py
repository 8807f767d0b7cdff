#!/usr/bin/env python
"""Train SADCL on any supported dataset, on CPU, one GPU or many (`accelerate launch scripts/train.py ...`).

    python scripts/train.py --config configs/demo.yaml [--field value ...]
    accelerate launch --multi_gpu --num_processes 8 scripts/train.py --config configs/coco2014-r101-448.yaml

Arguments come from `--config FILE` (YAML/JSON) and/or the command line (the command line wins); `--help` lists
them (model, data and `transformers.TrainingArguments` fields). Writes checkpoints, `OUTPUT_DIR/model`,
`all_results.json`, `train_log.json` and `train.log` to `--output_dir`.
"""

import json
import logging

from transformers.utils import logging as hf_logging

from sadcl_hf.training import parse_arguments, run_training


def main() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, training_args = parse_arguments()
    hf_logging.set_verbosity(training_args.get_process_log_level())
    metrics = run_training(model_args, data_args, training_args)
    if training_args.should_log:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}, indent=2))


if __name__ == "__main__":
    main()
