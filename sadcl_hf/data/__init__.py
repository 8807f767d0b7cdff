"""Data for sadcl-hf: dataset loaders, transforms and collation.

Every loader returns a `datasets.Dataset` / `DatasetDict` with an `image` column (`datasets.Image`, decoded
lazily) and a `labels` column (`List(ClassLabel(names=...))`, the ids of the classes present), so the class
names travel with the data::

    from sadcl_hf.data import MultiLabelCollator, build_train_transform, dataset_label_names, load_multilabel_dataset

    dataset = load_multilabel_dataset("digits-mosaic")           # or "coco2014", root="/data/coco", ...
    names = dataset_label_names(dataset)
    collator = MultiLabelCollator(len(names), transform=build_train_transform(448))
"""

from .coco import COCO_SPLITS, load_coco
from .collator import MultiLabelCollator, TooManyUnreadableImagesError, read_unreadable_list
from .common import DatasetLayoutError, dataset_label_names, multilabel_features
from .digits_mosaic import (
    DIGITS_MOSAIC_SPLITS,
    digits_mosaic_cache_path,
    digits_mosaic_scan_pools,
    load_digits_mosaic,
)
from .folder import from_hub_dataset, load_folder
from .images import ImageLoadError, load_image
from .loading import DATASET_NAMES, DATASET_SPLITS, DATASETS, DatasetInfo, dataset_info, load_multilabel_dataset
from .nuswide import NUS_WIDE_CONCEPTS, NUS_WIDE_SPLITS, load_nuswide
from .transforms import (
    DEFAULT_CROP_SCALES,
    ImageProcessorTransform,
    MultiScaleCrop,
    ToNormalizedTensor,
    build_train_transform,
)
from .vg500 import VG500_NUM_CLASSES, VG500_SPLITS, load_vg500
from .voc import VOC_CLASSES, VOC_DIFFICULT_MODES, VOC_SPLITS, load_voc

__all__ = [
    "COCO_SPLITS",
    "DATASETS",
    "DATASET_NAMES",
    "DATASET_SPLITS",
    "DEFAULT_CROP_SCALES",
    "DIGITS_MOSAIC_SPLITS",
    "NUS_WIDE_CONCEPTS",
    "NUS_WIDE_SPLITS",
    "VG500_NUM_CLASSES",
    "VG500_SPLITS",
    "VOC_CLASSES",
    "VOC_DIFFICULT_MODES",
    "VOC_SPLITS",
    "DatasetInfo",
    "DatasetLayoutError",
    "ImageLoadError",
    "ImageProcessorTransform",
    "MultiLabelCollator",
    "MultiScaleCrop",
    "ToNormalizedTensor",
    "TooManyUnreadableImagesError",
    "build_train_transform",
    "dataset_info",
    "digits_mosaic_cache_path",
    "digits_mosaic_scan_pools",
    "from_hub_dataset",
    "dataset_label_names",
    "load_coco",
    "load_digits_mosaic",
    "load_folder",
    "load_image",
    "load_multilabel_dataset",
    "load_nuswide",
    "load_vg500",
    "load_voc",
    "multilabel_features",
    "read_unreadable_list",
]
