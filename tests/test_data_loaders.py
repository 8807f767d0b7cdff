"""Dataset loaders on tiny fixtures written in each benchmark's real on-disk format (no network)."""

import csv
import json
import logging
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from sadcl_hf.data import (
    DATASET_NAMES,
    DATASETS,
    NUS_WIDE_CONCEPTS,
    VOC_CLASSES,
    DatasetLayoutError,
    dataset_info,
    dataset_label_names,
    from_hub_dataset,
    load_coco,
    load_folder,
    load_multilabel_dataset,
    load_nuswide,
    load_vg500,
    load_voc,
)
from sadcl_hf.training.arguments import DataArguments
from sadcl_hf.training.recipe import load_split


def write_image(path: Path, color=(10, 200, 30), size=(12, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = PIL.Image.new("RGB", size, color)
    image.save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    return path


def label_sets(dataset) -> list[list[str]]:
    names = dataset_label_names(dataset)
    return [[names[i] for i in ids] for ids in dataset["labels"]]


def assert_schema(dataset, names, extra=()):
    assert isinstance(dataset.features["image"], datasets.Image)
    assert isinstance(dataset.features["labels"], datasets.List)
    assert isinstance(dataset.features["labels"].feature, datasets.ClassLabel)
    assert dataset.features["labels"].feature.names == list(names)
    assert set(dataset.column_names) == {"image", "labels", *extra}


# ----------------------------------------------------------------------------------------------------------------------
# MS-COCO
# ----------------------------------------------------------------------------------------------------------------------

COCO_CATEGORIES = [  # deliberately out of id order and with a gap, like the real file's ids 1..90
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 2, "name": "bicycle", "supercategory": "vehicle"},
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
]


def write_coco(root: Path, year: int = 2014) -> Path:
    for split, offset in (("train", 0), ("val", 100)):
        images = [
            {"id": offset + i, "file_name": f"COCO_{split}{year}_{offset + i:012d}.jpg", "width": 12, "height": 8}
            for i in (1, 2, 3)
        ]
        annotations = [
            {"id": 1, "image_id": offset + 1, "category_id": 1, "iscrowd": 0},
            {"id": 2, "image_id": offset + 1, "category_id": 3, "iscrowd": 0},
            {"id": 3, "image_id": offset + 1, "category_id": 3, "iscrowd": 0},
            {"id": 4, "image_id": offset + 2, "category_id": 90, "iscrowd": 1},
        ]  # image offset+3 has no annotation
        path = root / "annotations" / f"instances_{split}{year}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": COCO_CATEGORIES}))
        for image in images:
            write_image(root / f"{split}{year}" / image["file_name"])
    return root


def test_coco_labels_order_and_unlabeled(tmp_path):
    root = write_coco(tmp_path / "coco")
    dataset = load_coco(root)
    assert set(dataset) == {"train", "val"}
    train = dataset["train"]
    assert_schema(train, ["person", "bicycle", "car", "toothbrush"])
    assert label_sets(train) == [["person", "car"], ["toothbrush"], []]
    assert train[0]["image"].size == (12, 8)
    assert train[0]["image"].mode == "RGB"
    dropped = load_coco(root, "val", drop_unlabeled=True)
    assert label_sets(dropped) == [["person", "car"], ["toothbrush"]]


def test_coco2017_through_entry_point(tmp_path):
    root = write_coco(tmp_path / "coco17", year=2017)
    val = load_multilabel_dataset("coco2017", root=root, split="val")
    assert len(val) == 3 and dataset_label_names(val)[0] == "person"
    with pytest.raises(DatasetLayoutError, match=r"annotations/instances_train2014\.json"):
        load_multilabel_dataset("coco2014", root=root, split="train")


def test_coco_missing_image_and_bad_annotation(tmp_path, caplog):
    root = write_coco(tmp_path / "coco")
    (root / "train2014" / "COCO_train2014_000000000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 3 image file\(s\) are missing.*000000000002\.jpg"):
        load_coco(root, "train")
    with caplog.at_level(logging.WARNING):
        train = load_coco(root, "train", skip_missing=True)
    assert label_sets(train) == [["person", "car"], []]
    assert "skipped 1 missing image" in caplog.text

    annotation_path = root / "annotations" / "instances_val2014.json"
    content = json.loads(annotation_path.read_text())
    content["annotations"].append({"id": 9, "image_id": 101, "category_id": 55, "iscrowd": 0})
    annotation_path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="category_id 55"):
        load_coco(root, "val")


# ----------------------------------------------------------------------------------------------------------------------
# PASCAL VOC
# ----------------------------------------------------------------------------------------------------------------------


def voc_xml(filename: str, objects: list[tuple[str, int]]) -> str:
    parts = [f"<annotation><folder>VOC2007</folder><filename>{filename}</filename>"]
    for name, difficult in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>"
            "</bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


VOC_OBJECTS = {
    "000001": [("dog", 0), ("person", 1)],  # person: difficult only
    "000002": [("car", 1), ("car", 0), ("cat", 1)],  # car: one clear object; cat: difficult only
    "000003": [("tvmonitor", 0)],
}


def write_voc(root: Path, year: int = 2007, splits=None) -> Path:
    year_dir = root / "VOCdevkit" / f"VOC{year}"
    splits = splits or {"trainval": ["000001", "000002"], "test": ["000003"]}
    (year_dir / "ImageSets" / "Main").mkdir(parents=True)
    (year_dir / "Annotations").mkdir(parents=True)
    for split, ids in splits.items():
        (year_dir / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    for image_id, objects in VOC_OBJECTS.items():
        (year_dir / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.jpg", objects))
        write_image(year_dir / "JPEGImages" / f"{image_id}.jpg")
    return root


def test_voc_difficult_modes(tmp_path):
    root = write_voc(tmp_path / "voc")
    negative = load_voc(root, "trainval")
    assert_schema(negative, VOC_CLASSES)
    assert label_sets(negative) == [["dog"], ["car"]]
    positive = load_voc(root, "trainval", difficult="positive")
    assert label_sets(positive) == [["dog", "person"], ["car", "cat"]]
    assert set(positive.column_names) == set(negative.column_names) == {"image", "labels"}
    for unsupported in ("ignore", "hard"):  # no column that evaluation would not read
        with pytest.raises(ValueError, match=r"difficult must be one of \['negative', 'positive'\]"):
            load_voc(root, difficult=unsupported)


def test_voc_accepted_roots_and_wrong_root(tmp_path):
    root = write_voc(tmp_path / "voc")
    for accepted in (root, root / "VOCdevkit", root / "VOCdevkit" / "VOC2007"):
        test = load_multilabel_dataset("voc2007", root=accepted, split="test")
        assert label_sets(test) == [["tvmonitor"]]
    everything = load_multilabel_dataset("voc2007", root=root)
    assert set(everything) == {"trainval", "test"}
    with pytest.raises(DatasetLayoutError, match=r"VOCdevkit/VOC2007"):
        load_voc(tmp_path)
    with pytest.raises(ValueError, match="Unknown PASCAL VOC 2007 split 'val'"):
        load_voc(root, "val")


def test_voc2012_splits_and_bad_annotations(tmp_path):
    splits = {"train": ["000001"], "val": ["000002"], "trainval": ["000001", "000002"]}
    root = write_voc(tmp_path / "voc12", 2012, splits)
    dataset = load_multilabel_dataset("voc2012", root=root / "VOCdevkit" / "VOC2012")
    assert {name: len(part) for name, part in dataset.items()} == {"train": 1, "val": 1, "trainval": 2}
    annotations = root / "VOCdevkit" / "VOC2012" / "Annotations"
    (annotations / "000002.xml").write_text(voc_xml("000002.jpg", [("unicorn", 0)]))
    with pytest.raises(ValueError, match=r"000002\.xml.*unknown object class 'unicorn'"):
        load_voc(root, "val", year=2012)
    (annotations / "000002.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"no annotation file.*000002\.xml"):
        load_voc(root, "val", year=2012)


# ----------------------------------------------------------------------------------------------------------------------
# NUS-WIDE
# ----------------------------------------------------------------------------------------------------------------------

NUS_TRAIN = {"actor\\0001_11.jpg": ["sky", "clouds"], "actor\\0002_12.jpg": [], "zoo\\0003_13.jpg": ["zebra"]}
NUS_TEST = {"zoo\\0004_14.jpg": ["animal", "zebra", "grass"]}


def write_nuswide_official(root: Path, with_concepts_file: bool = True) -> Path:
    (root / "ImageList").mkdir(parents=True)
    (root / "Groundtruth" / "TrainTestLabels").mkdir(parents=True)
    if with_concepts_file:
        (root / "Concepts81.txt").write_text("\n".join(NUS_WIDE_CONCEPTS) + "\n")
    for subset, rows in (("Train", NUS_TRAIN), ("Test", NUS_TEST)):
        (root / "ImageList" / f"{subset}Imagelist.txt").write_text("".join(f"{name}\n" for name in rows))
        for concept in NUS_WIDE_CONCEPTS:
            values = "".join(f"{int(concept in labels)} \n" for labels in rows.values())
            (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{subset}.txt").write_text(values)
        for name in rows:
            write_image(root / "Flickr" / name.replace("\\", "/"))
    return root


def test_nuswide_official(tmp_path):
    root = write_nuswide_official(tmp_path / "nus")
    dataset = load_nuswide(root)
    assert len(NUS_WIDE_CONCEPTS) == 81
    assert_schema(dataset["train"], NUS_WIDE_CONCEPTS)
    assert label_sets(dataset["train"]) == [["clouds", "sky"], ["zebra"]]  # the unlabeled image is dropped
    assert label_sets(dataset["test"]) == [["animal", "grass", "zebra"]]
    kept = load_multilabel_dataset("nuswide", root=root, split="train", drop_unlabeled=False)
    assert label_sets(kept) == [["clouds", "sky"], [], ["zebra"]]
    assert kept[2]["image"].size == (12, 8)


def test_nuswide_official_errors(tmp_path):
    root = write_nuswide_official(tmp_path / "nus", with_concepts_file=False)
    label_file = root / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Train.txt"
    label_file.write_text("1\n0\n")
    with pytest.raises(ValueError, match=r"Labels_sky_Train\.txt has 2 lines but .* lists 3 images"):
        load_nuswide(root, "train")
    label_file.write_text("1\nyes\n0\n")
    with pytest.raises(ValueError, match=r"Labels_sky_Train\.txt line 2: expected 0 or 1, got 'yes'"):
        load_nuswide(root, "train")
    label_file.unlink()
    with pytest.raises(DatasetLayoutError, match=r"Labels_sky_Train\.txt"):
        load_nuswide(root, "train")
    with pytest.raises(DatasetLayoutError, match=r"ImageList/TrainImagelist\.txt"):
        load_nuswide(tmp_path)


def test_nuswide_asl_csv(tmp_path):
    root = tmp_path / "nus_asl"
    rows = [
        ("images/0001_11.jpg", "['clouds', 'sky']", "train"),
        ("images/0002_12.jpg", "['zebra']", "train"),
        ("images/0003_13.jpg", "['animal', 'grass']", "val"),
    ]
    root.mkdir()
    with open(root / "nus_wid_data.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "label", "split_name"])
        writer.writerows(rows)
    for path, _, _ in rows:
        write_image(root / path)
    dataset = load_nuswide(root)
    assert label_sets(dataset["train"]) == [["clouds", "sky"], ["zebra"]]
    assert label_sets(dataset["test"]) == [["animal", "grass"]]
    assert_schema(dataset["test"], NUS_WIDE_CONCEPTS)

    with open(root / "nus_wid_data.csv", "a", newline="") as handle:
        csv.writer(handle).writerow(["images/0002_12.jpg", "['unicorn']", "train"])
    with pytest.raises(ValueError, match=r"nus_wid_data\.csv line 5: unknown NUS-WIDE concept\(s\) \['unicorn'\]"):
        load_nuswide(root, "train")


def test_nuswide_per_split_csv(tmp_path):
    root = tmp_path / "nus_csv"
    for split, rows in (("train", [("a.jpg", "sky|water")]), ("test", [("b.jpg", "")])):
        write_image(root / "pics" / rows[0][0])
        with open(root / f"nus_wide_{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "labels"])
            writer.writerows(rows)
    dataset = load_nuswide(root, image_dir=root / "pics", drop_unlabeled=False)
    assert label_sets(dataset["train"]) == [["sky", "water"]]
    assert label_sets(dataset["test"]) == [[]]
    with pytest.raises(DatasetLayoutError, match="Could not recognise a NUS-WIDE layout"):
        load_nuswide(root / "pics")


# ----------------------------------------------------------------------------------------------------------------------
# Visual Genome 500
# ----------------------------------------------------------------------------------------------------------------------


def write_vg500(root: Path, names_file: bool = False) -> Path:
    root.mkdir(parents=True)
    (root / "train_list_500.txt").write_text("10.jpg\n11.jpg\n")
    (root / "test_list_500.txt").write_text("2400000.jpg\n")
    (root / "vg_category_500_labels_index.json").write_text(
        json.dumps({"10.jpg": [0, 499], "11.jpg": [7], "2400000.jpg": [3, 3, 250], "unused.jpg": [1]})
    )
    if names_file:
        (root / "vg_category_500.json").write_text(json.dumps({f"object{i}": i for i in reversed(range(500))}))
    write_image(root / "VG_100K" / "10.jpg")
    write_image(root / "VG_100K" / "11.jpg")
    write_image(root / "VG_100K_2" / "2400000.jpg", color=(1, 2, 250))
    return root


def test_vg500(tmp_path):
    root = write_vg500(tmp_path / "vg")
    dataset = load_multilabel_dataset("vg500", root=root)
    assert_schema(dataset["train"], [str(i) for i in range(500)])
    assert dataset["train"]["labels"] == [[0, 499], [7]]
    assert dataset["test"]["labels"] == [[3, 250]]
    assert np.asarray(dataset["test"][0]["image"])[0, 0, 2] > 200  # found in VG_100K_2

    named = load_vg500(write_vg500(tmp_path / "vg_named", names_file=True), "train")
    assert dataset_label_names(named)[:2] == ["object0", "object1"] and len(dataset_label_names(named)) == 500


def test_vg500_errors(tmp_path):
    root = write_vg500(tmp_path / "vg")
    (root / "vg_category_500_labels_index.json").write_text(json.dumps({"10.jpg": [500], "11.jpg": [1]}))
    with pytest.raises(ValueError, match=r"labels of 10\.jpg must be .* \[0, 500\)"):
        load_vg500(root, "train")
    with pytest.raises(ValueError, match=r"2400000\.jpg, which has no entry"):
        load_vg500(root, "test")
    with pytest.raises(DatasetLayoutError, match=r"vg_category_500_labels_index\.json"):
        load_vg500(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# Custom folders
# ----------------------------------------------------------------------------------------------------------------------


def test_folder_jsonl_single_split(tmp_path):
    root = tmp_path / "mine"
    write_image(root / "a.png")
    write_image(root / "sub" / "b.jpg")
    (root / "metadata.jsonl").write_text(
        '{"file_name": "a.png", "labels": ["dog", "cat"]}\n\n{"file_name": "sub/b.jpg", "labels": []}\n'
    )
    dataset = load_folder(root)
    assert list(dataset) == ["train"]
    assert_schema(dataset["train"], ["cat", "dog"])  # sorted alphabetically without classes.txt
    assert label_sets(dataset["train"]) == [["cat", "dog"], []]
    labelled = load_multilabel_dataset("folder", root=root, split="train", drop_unlabeled=True)
    assert label_sets(labelled) == [["cat", "dog"]]

    (root / "classes.txt").write_text("dog\ncat\nbird\n")
    ordered = load_folder(root, "train")
    assert dataset_label_names(ordered) == ["dog", "cat", "bird"]
    assert label_sets(ordered) == [["dog", "cat"], []]


def test_folder_csv_splits_and_unknown_label(tmp_path):
    root = tmp_path / "mine"
    for split, name, labels in (("train", "x.jpg", "b|a"), ("validation", "y.jpg", '["c"]')):
        write_image(root / split / name)
        with open(root / split / "metadata.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "labels"])
            writer.writerow([name, labels])
    dataset = load_folder(root)
    assert set(dataset) == {"train", "validation"}
    assert dataset_label_names(dataset) == ["a", "b", "c"]  # classes shared by all splits
    assert label_sets(dataset["validation"]) == [["c"]]
    with pytest.raises(ValueError, match=r"train/metadata\.csv:2: unknown label\(s\) \['b'\]"):
        load_folder(root, "train", label_names=["a", "c"])
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        load_folder(root, "test")


def test_folder_bad_inputs(tmp_path, caplog):
    root = tmp_path / "mine"
    write_image(root / "good.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "metadata.jsonl").write_text(
        '{"file_name": "good.png", "labels": ["x"]}\n{"file_name": "corrupt.jpg", "labels": ["y"]}\n'
    )
    with caplog.at_level(logging.WARNING):
        dataset = load_folder(root, "train", skip_unreadable=True)
    assert label_sets(dataset) == [["x"]]
    assert "skipped 1 unreadable image" in caplog.text and "corrupt.jpg" in caplog.text

    (root / "metadata.jsonl").write_text(
        '{"file_name": "good.png", "labels": ["x"]}\n{"file_name": "gone.png", "labels": ["y"]}\n'
    )
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        load_folder(root)
    (root / "metadata.jsonl").write_text('{"file_name": "good.png", "labels": "x"}\n{"file": "good.png"}\n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl:2: expected an object with 'file_name' and 'labels'"):
        load_folder(root)
    (root / "metadata.jsonl").unlink()
    with pytest.raises(DatasetLayoutError, match=r"metadata\.jsonl"):
        load_folder(root)


def write_shapes_folder(root: Path, separator: str = " ", metadata: str = "csv") -> list[str]:
    """24 images labelled with every colour x shape x size combination joined by `separator`; returns the strings."""
    combinations = [
        separator.join((colour, shape, size))
        for colour in ("red", "green", "blue", "white")
        for shape in ("square", "circle", "triangle")
        for size in ("small", "large")
    ]
    rows = [(f"{index:02d}.png", labels) for index, labels in enumerate(combinations)]
    for file_name, _ in rows:
        write_image(root / "train" / file_name)
    if metadata == "csv":
        with open(root / "train" / "metadata.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([("file_name", "labels"), *rows])
    else:
        lines = [json.dumps({"file_name": name, "labels": labels}) for name, labels in rows]
        (root / "train" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return combinations


@pytest.mark.parametrize("metadata", ["csv", "jsonl"])
def test_folder_space_separated_labels_stop_naming_file_row_and_option(tmp_path, metadata):
    write_shapes_folder(tmp_path, " ", metadata)
    # before: 24 classes, one per combination, without a word
    with pytest.raises(ValueError) as raised:
        load_folder(tmp_path, "train")
    message = str(raised.value)
    assert "\n" not in message
    assert f"train/metadata.{metadata}: the 'labels' strings look separated by ' '" in message
    line = 2 if metadata == "csv" else 1
    assert f"metadata.{metadata}:{line}: 'red square small' would be one class" in message
    assert "24 classes, one per combination, instead of 9" in message
    assert "label_separator=' '" in message and """--dataset_options '{"label_separator": " "}'""" in message


def test_folder_label_separator_from_the_training_command_line(tmp_path):
    combinations = write_shapes_folder(tmp_path / "shapes", " ")
    arguments = DataArguments(
        dataset="folder", dataset_root=str(tmp_path / "shapes"), dataset_options='{"label_separator": " "}'
    )
    dataset = load_split(arguments, "train")
    assert dataset_label_names(dataset) == sorted(
        ["red", "green", "blue", "white", "square", "circle", "triangle", "small", "large"]
    )
    assert label_sets(dataset) == [sorted(labels.split(" ")) for labels in combinations]
    # other separators: commas (with spaces around the names) and semicolons
    for folder, separator in (("comma", ", "), ("semicolon", ";")):
        write_shapes_folder(tmp_path / folder, separator)
        with pytest.raises(ValueError, match=f"look separated by {separator.strip()!r}"):
            load_folder(tmp_path / folder, "train")
        assert len(dataset_label_names(load_folder(tmp_path / folder, "train", label_separator=separator.strip()))) == 9
    # an explicit separator skips the first check; a wrong one still leaves every row with a class of its own
    with pytest.raises(ValueError, match="24 of 24 metadata rows have a 'labels' class no other row has"):
        load_folder(tmp_path / "semicolon", "train", label_separator=",")
    with pytest.raises(ValueError, match="label_separator must be a non-empty string"):
        load_folder(tmp_path / "shapes", "train", label_separator="")


def test_folder_multi_word_class_names_are_not_flagged(tmp_path):
    rows = [("a.png", "traffic light"), ("b.png", "fire hydrant|stop sign"), ("c.png", "stop sign")]
    for name, _ in rows:
        write_image(tmp_path / name)
    with open(tmp_path / "metadata.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("file_name", "labels"), *rows])
    assert dataset_label_names(load_folder(tmp_path, "train")) == ["fire hydrant", "stop sign", "traffic light"]
    single_labels = "file_name,labels\na.png,traffic light\nb.png,stop sign\nc.png,fire hydrant\n"
    (tmp_path / "metadata.csv").write_text(single_labels)
    assert len(dataset_label_names(load_folder(tmp_path, "train"))) == 3  # single labels: splitting gives more names


def test_folder_row_with_its_own_class_is_reported(tmp_path):
    lines = ["file_name,labels"] + [f"{index:02d}.png,photo-{index}" for index in range(24)]
    for index in range(24):
        write_image(tmp_path / f"{index:02d}.png")
    (tmp_path / "metadata.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as raised:
        load_folder(tmp_path, "train")
    message = str(raised.value)
    assert f"{tmp_path / 'metadata.csv'}:2: 24 of 24 metadata rows have a 'labels' class no other row has" in message
    assert "label_separator" in message and "classes.txt" in message
    (tmp_path / "classes.txt").write_text("\n".join(f"photo-{index}" for index in range(24)) + "\n")
    assert len(dataset_label_names(load_folder(tmp_path, "train"))) == 24  # explicit class names are trusted


# ----------------------------------------------------------------------------------------------------------------------
# Any datasets.Dataset
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def image_paths(tmp_path):
    return [str(write_image(tmp_path / f"{i}.png", color=(i * 40, 0, 0))) for i in range(3)]


def test_from_hub_dataset_label_formats(image_paths):
    names = ["cat", "dog", "bird"]
    by_names = datasets.Dataset.from_dict({"img": image_paths, "tags": [["dog"], ["cat", "bird"], []]})
    converted = from_hub_dataset(by_names, image_column="img", label_column="tags", label_names=names)
    assert_schema(converted, names)
    assert converted["labels"] == [[1], [0, 2], []]
    assert converted[1]["image"].getpixel((0, 0))[0] == 40

    by_ids = datasets.Dataset.from_dict({"image": image_paths, "labels": [[2], [0, 1], []]})
    assert from_hub_dataset(by_ids, label_names=names)["labels"] == [[2], [0, 1], []]
    with pytest.raises(ValueError, match="pass label_names"):
        from_hub_dataset(by_ids)

    float_vectors = [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    multi_hot_float = datasets.Dataset.from_dict({"image": image_paths, "y": float_vectors})
    assert from_hub_dataset(multi_hot_float, label_column="y", label_names=names)["labels"] == [[1, 2], [0], []]
    multi_hot_int = datasets.Dataset.from_dict({"image": image_paths, "y": [[0, 1, 1], [1, 0, 0], [0, 0, 0]]})
    assert from_hub_dataset(multi_hot_int, label_column="y", label_names=names)["labels"] == [[1, 2], [0], []]
    ambiguous = datasets.Dataset.from_dict({"image": image_paths, "y": [[0, 1], [1, 1], [0, 0]]})
    forced = from_hub_dataset(ambiguous, label_column="y", label_names=["a", "b"], label_format="multi_hot")
    assert forced["labels"] == [[1], [0, 1], []]


def test_from_hub_dataset_classlabel_features_and_dict(image_paths):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["no", "yes"])})
    single = datasets.Dataset.from_dict({"image": image_paths, "label": [1, 0, 1]}, features=features)
    converted = from_hub_dataset(single, label_column="label")
    assert dataset_label_names(converted) == ["no", "yes"] and converted["labels"] == [[1], [0], [1]]

    objects = datasets.List(datasets.ClassLabel(names=["a", "b", "c"]))
    features = datasets.Features({"image": datasets.Image(), "objects": objects})
    train = datasets.Dataset.from_dict({"image": image_paths[:2], "objects": [[2, 2], [0]]}, features=features)
    test = datasets.Dataset.from_dict({"image": image_paths[2:], "objects": [[1]]}, features=features)
    parts = datasets.DatasetDict({"train": train, "test": test})
    converted = from_hub_dataset(parts, label_column="objects")
    assert isinstance(converted, datasets.DatasetDict)
    assert converted["train"]["labels"] == [[2], [0]] and converted["test"]["labels"] == [[1]]
    assert dataset_label_names(converted) == ["a", "b", "c"]


def test_from_hub_dataset_errors(image_paths):
    names = datasets.Dataset.from_dict({"image": image_paths, "labels": [["dog"], ["cat"], ["emu"]]})
    with pytest.raises(ValueError, match=r"row 2: unknown label name\(s\) \['emu'\]"):
        from_hub_dataset(names, label_names=["cat", "dog"])
    with pytest.raises(ValueError, match="Column 'tags' not found"):
        from_hub_dataset(names, label_column="tags")
    ids = datasets.Dataset.from_dict({"image": image_paths, "labels": [[0], [5], []]})
    with pytest.raises(ValueError, match=r"row 1: class ids \[5\]"):
        from_hub_dataset(ids, label_names=["a", "b"])
    multi_hot = datasets.Dataset.from_dict({"image": image_paths, "labels": [[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]]})
    with pytest.raises(ValueError, match="must be 0/1"):
        from_hub_dataset(multi_hot, label_names=["a", "b"])
    with pytest.raises(ValueError, match="Cannot tell whether"):
        unclear = datasets.Dataset.from_dict({"image": image_paths, "labels": [[0, 0], [1, 2], [1]]})
        from_hub_dataset(unclear, label_names=["a", "b", "c"])


# ----------------------------------------------------------------------------------------------------------------------
# Entry point and helpers
# ----------------------------------------------------------------------------------------------------------------------


def test_entry_point_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'; available: coco2014, coco2017, voc2007") as info:
        load_multilabel_dataset("imagenet", root=tmp_path)
    assert all(name in str(info.value) for name in DATASET_NAMES)
    with pytest.raises(ValueError, match="needs root"):
        load_multilabel_dataset("coco2014")
    with pytest.raises(ValueError, match="takes no root"):
        load_multilabel_dataset("digits-mosaic", root=tmp_path)
    with pytest.raises(ValueError, match="Unknown split 'test' for 'coco2014'"):
        load_multilabel_dataset("coco2014", root=tmp_path, split="test")
    with pytest.raises(DatasetLayoutError, match="is not a directory"):
        load_multilabel_dataset("COCO2014", root=tmp_path / "missing")


def test_dataset_registry_is_the_one_table_of_names_splits_and_display_names():
    from sadcl_hf.model_card import _dataset_display_name
    from sadcl_hf.training.recipe import default_splits

    assert DATASET_NAMES == tuple(DATASETS)
    for name, info in DATASETS.items():
        assert info.name == name and info.display_name
        if info.splits is not None:
            assert {info.train_split, info.eval_split} <= set(info.splits), name
        assert default_splits(name) == (info.train_split, info.eval_split)
        assert _dataset_display_name(name) == info.display_name
    assert dataset_info("NUS_WIDE") is DATASETS["nuswide"] and dataset_info("vg-500") is DATASETS["vg500"]
    assert default_splits("voc2007") == ("trainval", "test") and default_splits("coco2014") == ("train", "val")
    assert default_splits("someone/hub-dataset") == ("train", "validation")
    assert dataset_info("voc2012").label_names == VOC_CLASSES
    assert dataset_info("nuswide").label_names == NUS_WIDE_CONCEPTS and len(dataset_info("coco2014").label_names) == 80
    assert dataset_info("vg500").label_names is None and dataset_info("vg500").label_file.endswith(".json")
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
        dataset_info("imagenet")


def test_label_names_errors():
    plain = datasets.Dataset.from_dict({"labels": [[0, 1]]})
    with pytest.raises(ValueError, match=r"List\(ClassLabel"):
        dataset_label_names(plain)
    with pytest.raises(ValueError, match="the dataset has none"):
        dataset_label_names(datasets.Dataset.from_dict({"x": [1]}))

    def one_row(names):
        features = datasets.Features({"labels": datasets.List(datasets.ClassLabel(names=names))})
        return datasets.Dataset.from_dict({"labels": [[0]]}, features=features)

    mixed = datasets.DatasetDict({"train": one_row(["a", "b"]), "test": one_row(["a", "c"])})
    with pytest.raises(ValueError, match="different class names"):
        dataset_label_names(mixed)
