"""Write the JSON-lines meta files (spec 3.1) for MVTec-AD, VisA and users' own image folders.

Each line: `{"filename", "label", "label_name", ["maskname",] "clsname"}`, paths relative to the image
dir the config's `image_reader.kwargs.image_dir` points at. All functions return per-class counts
`{clsname: {"train": n, "test_good": n, "test_defective": n}}`.
"""
import csv
import json
import os
from collections import OrderedDict

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def meta_entry(filename, label, clsname, maskname=None):
    """One meta line as a dict, keys in the original files' order."""
    entry = {"filename": filename, "label": label, "label_name": "defective" if label else "good"}
    if maskname is not None:
        entry["maskname"] = maskname
    entry["clsname"] = clsname
    return entry


def write_meta(path, entries):
    """Write entries as JSON lines (creating the folder)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(entry) + "\n" for entry in entries)


def read_meta(path):
    """Entries of an existing JSON-lines meta file ([] when the file does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def count_classes(train, test):
    """Per-class counts of train / test-good / test-defective entries, classes in first-seen order."""
    counts = OrderedDict()
    for key, entries in (("train", train), ("test", test)):
        for entry in entries:
            row = counts.setdefault(entry["clsname"], {"train": 0, "test_good": 0, "test_defective": 0})
            row[key if key == "train" else ("test_defective" if entry["label"] else "test_good")] += 1
    return counts


def list_images(folder):
    """Sorted image file names (not paths) directly inside `folder`."""
    return sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS)
                  and os.path.isfile(os.path.join(folder, name)))


def _subdirs(folder):
    return sorted(name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name)))


# ---------------------------------------------------------------- MVTec-AD layout

def mvtec_class_entries(root, clsname):
    """(train, test) entries of one MVTec-layout class folder `root/clsname`."""
    base = os.path.join(root, clsname)
    train = [meta_entry(f"{clsname}/train/good/{name}", 0, clsname)
             for name in list_images(os.path.join(base, "train", "good"))]
    test = []
    for defect in _subdirs(os.path.join(base, "test")):
        for name in list_images(os.path.join(base, "test", defect)):
            filename = f"{clsname}/test/{defect}/{name}"
            test.append(meta_entry(filename, 0, clsname) if defect == "good"
                        else meta_entry(filename, 1, clsname, _mvtec_mask(root, filename)))
    return train, test


def _mvtec_mask(root, filename):
    clsname, _, defect, name = filename.split("/")
    maskname = f"{clsname}/ground_truth/{defect}/{os.path.splitext(name)[0]}_mask.png"
    if not os.path.isfile(os.path.join(root, maskname)):
        raise FileNotFoundError(f"no ground-truth mask for defective image {os.path.join(root, filename)}: "
                                f"expected {os.path.join(root, maskname)}")
    return maskname


def build_mvtec_meta(root, out_dir):
    """Walk `<cls>/train/good`, `<cls>/test/<defect>`, `<cls>/ground_truth/<defect>/<stem>_mask.png`
    under `root`; write `out_dir/train.json` and `out_dir/test.json` (sorted by class, defect, file)."""
    classes = [] if not os.path.isdir(root) else [
        name for name in _subdirs(root) if os.path.isdir(os.path.join(root, name, "train", "good"))]
    if not classes:
        raise FileNotFoundError(f"no class folder with train/good under {root}; pass the folder that holds "
                                "bottle/, cable/, ... (mvtec_anomaly_detection)")
    train, test = [], []
    for clsname in classes:
        cls_train, cls_test = mvtec_class_entries(root, clsname)
        train += cls_train
        test += cls_test
    write_meta(os.path.join(out_dir, "train.json"), train)
    write_meta(os.path.join(out_dir, "test.json"), test)
    return count_classes(train, test)


# ---------------------------------------------------------------- VisA

VISA_COLUMNS = ("object", "split", "label", "image", "mask")


def build_visa_meta(root, out_dir=None, split_csv="split_csv/1cls.csv"):
    """Read VisA's `split_csv/1cls.csv` (object,split,label,image,mask; label normal/anomaly) and write
    `train.json` / `test.json` in `out_dir` (default `root`), paths relative to `root`, CSV order."""
    csv_path = os.path.join(root, split_csv)
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"VisA split file not found: {csv_path}; pass --root the folder holding "
                                "split_csv/ and the class folders (candle/, capsules/, ...)")
    splits = {"train": [], "test": []}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(VISA_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: missing columns {sorted(missing)}; expected {list(VISA_COLUMNS)}")
        for row in reader:
            split, entry = _visa_entry(root, row, f"{csv_path}:{reader.line_num}")
            splits[split].append(entry)
    out_dir = root if out_dir is None else out_dir
    write_meta(os.path.join(out_dir, "train.json"), splits["train"])
    write_meta(os.path.join(out_dir, "test.json"), splits["test"])
    return count_classes(splits["train"], splits["test"])


def _visa_entry(root, row, where):
    split, label_name = row["split"].strip(), row["label"].strip()
    if split not in ("train", "test") or label_name not in ("normal", "anomaly"):
        raise ValueError(f"{where}: split must be train/test and label normal/anomaly; got {split!r}, {label_name!r}")
    image, mask = row["image"].strip(), (row["mask"] or "").strip()
    _require_file(root, image, f"{where}: image")
    if label_name == "normal":
        return split, meta_entry(image, 0, row["object"].strip())
    if not mask:
        raise ValueError(f"{where}: anomalous image {image} has no mask")
    _require_file(root, mask, f"{where}: mask")
    return split, meta_entry(image, 1, row["object"].strip(), mask)


def _require_file(root, relative, what):
    if not os.path.isfile(os.path.join(root, relative)):
        raise FileNotFoundError(f"{what} not found: {os.path.join(root, relative)}")


# ---------------------------------------------------------------- users' folders

def build_folder_meta(name, train_good, test_good, test_bad, out_dir, masks=None, image_dir=None):
    """Add (or replace) class `name` in `out_dir/train.json` / `test.json` from three image folders.

    Images are listed recursively (sorted); filenames are relative to `image_dir` (default `out_dir`),
    which must be the config's `image_reader.kwargs.image_dir`. Defective images get the mask
    `<masks>/<same subfolder>/<stem>.png` or `<stem>_mask.png`; without `masks` they get none (the
    dataset then treats the whole image as defective). Entries of other classes are kept, so repeated
    calls build one multi-class dataset; they must have been written for the same `image_dir`.
    """
    image_dir = out_dir if image_dir is None else image_dir
    paths = {"train_good": train_good, "test_good": test_good, "test_bad": test_bad}
    for flag, folder in paths.items():
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"--{flag.replace('_', '-')} folder not found: {folder}")
    rel = lambda path: os.path.relpath(path, image_dir).replace(os.sep, "/")  # noqa: E731
    new_train = [meta_entry(rel(p), 0, name) for p in _walk_images(train_good)]
    new_test = [meta_entry(rel(p), 0, name) for p in _walk_images(test_good)]
    new_test += [meta_entry(rel(p), 1, name, None if masks is None else rel(_folder_mask(p, test_bad, masks)))
                 for p in _walk_images(test_bad)]
    if not new_train:
        raise ValueError(f"no training images found in {train_good} (extensions {IMAGE_EXTENSIONS})")
    train, test = (_others(os.path.join(out_dir, f), name, image_dir) for f in ("train.json", "test.json"))
    write_meta(os.path.join(out_dir, "train.json"), train + new_train)
    write_meta(os.path.join(out_dir, "test.json"), test + new_test)
    return count_classes(train + new_train, test + new_test)


def _walk_images(folder):
    """Full paths of the images under `folder`, recursively, sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found, key=lambda p: os.path.relpath(p, folder))


def _folder_mask(image_path, image_root, mask_root):
    subdir = os.path.dirname(os.path.relpath(image_path, image_root))
    stem = os.path.splitext(os.path.basename(image_path))[0]
    candidates = [os.path.join(mask_root, subdir, stem + suffix) for suffix in (".png", "_mask.png")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"no mask for defective image {image_path}: looked for {' or '.join(candidates)}; "
                            "add the mask or leave out --masks")


def _others(meta_path, name, image_dir):
    """Entries of `meta_path` of classes other than `name`; checks they resolve against `image_dir`."""
    kept = [entry for entry in read_meta(meta_path) if entry.get("clsname") != name]
    if kept and not os.path.isfile(os.path.join(image_dir, kept[0]["filename"])):
        raise ValueError(f"{meta_path} lists {kept[0]['filename']}, which is not under the image dir "
                         f"{image_dir}; pass the same --image-dir as when that class was added")
    return kept
