"""Datasets: item pipeline vs PIL, bad inputs, transforms, CIFAR-10, samplers, build_dataloader."""
import copy
import json
import os
import pickle

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler
from torchvision.transforms import Normalize
from torchvision.transforms.functional import to_tensor

from datasets.cifar_dataset import CIFAR10, load_batch
from datasets.custom_dataset import CustomDataset, derive_clsname
from datasets.data_builder import build_dataloader
from datasets.image_reader import OpenCVReader, build_image_reader
from datasets.samplers import ShardSampler
from datasets.transforms import (RandomColorJitter, RandomHFlip, RandomRotation, TestBaseTransform,
                                 TrainBaseTransform)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIZE = [24, 32]  # [h, w]


def _write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _rgb(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write_meta(path, metas):
    path.write_text("".join(json.dumps(m) + "\n" for m in metas))
    return str(path)


@pytest.fixture
def tree(tmp_path):
    """Image dir with 2 good + 1 defective image (and mask); returns (image_dir, metas, rgb arrays)."""
    root = tmp_path / "images"
    rgbs = {"a/train/good/000.png": _rgb(40, 30, 0), "a/test/good/000.png": _rgb(35, 50, 1),
            "a/test/crack/000.png": _rgb(40, 30, 2)}
    for name, rgb in rgbs.items():
        _write_png(root / name, rgb[:, :, ::-1])  # cv2 writes BGR
    mask = np.zeros((40, 30), np.uint8)
    mask[5:20, 3:11] = 255
    _write_png(root / "a/ground_truth/crack/000_mask.png", mask)
    metas = [{"filename": "a/train/good/000.png", "label": 0, "label_name": "good", "clsname": "a"},
             {"filename": "a/test/good/000.png", "label": 0},
             {"filename": "a/test/crack/000.png", "label": 1, "maskname": "a/ground_truth/crack/000_mask.png",
              "clsname": "a"}]
    return root, metas, rgbs, mask


def _dataset(root, meta_file, training=False, color_mode="RGB"):
    return CustomDataset(OpenCVReader(str(root), color_mode), meta_file, training, TestBaseTransform(SIZE),
                         Normalize(MEAN, STD))


def _expected_image(rgb):
    resized = Image.fromarray(rgb).resize((SIZE[1], SIZE[0]), Image.BILINEAR)
    return Normalize(MEAN, STD)(to_tensor(resized))


def test_item_matches_pil_pipeline(tree, tmp_path):
    root, metas, rgbs, mask = tree
    dataset = _dataset(root, _write_meta(tmp_path / "m.json", metas))
    assert len(dataset) == 3
    item = dataset[2]
    assert set(item) == {"filename", "height", "width", "label", "clsname", "image", "mask"}
    assert (item["filename"], item["height"], item["width"], item["label"], item["clsname"]) == (
        "a/test/crack/000.png", 40, 30, 1, "a")
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, *SIZE)
    assert torch.equal(item["image"], _expected_image(rgbs["a/test/crack/000.png"]))
    expected_mask = to_tensor(Image.fromarray(mask).resize((SIZE[1], SIZE[0]), Image.NEAREST))
    assert item["mask"].dtype == torch.float32 and item["mask"].shape == (1, *SIZE)
    assert torch.equal(item["mask"], expected_mask)
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}


def test_bgr_mode_swaps_channels_and_label_masks(tree, tmp_path):
    root, metas, rgbs, _ = tree
    meta_file = _write_meta(tmp_path / "m.json", metas)
    rgb_item, bgr_item = _dataset(root, meta_file)[1], _dataset(root, meta_file, color_mode="BGR")[1]
    raw = Normalize([0, 0, 0], [1, 1, 1])
    assert not torch.equal(rgb_item["image"], bgr_item["image"])
    expected = to_tensor(Image.fromarray(rgbs["a/test/good/000.png"][:, :, ::-1].copy()).resize((32, 24), Image.BILINEAR))
    assert torch.allclose(raw(bgr_item["image"] * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]),
                          expected, atol=1e-6)
    assert rgb_item["mask"].sum() == 0  # good, no maskname -> zeros
    metas[2].pop("maskname")
    item = _dataset(root, _write_meta(tmp_path / "n.json", metas))[2]
    assert torch.equal(item["mask"], torch.ones(1, *SIZE))  # defective, no maskname -> ones


def test_clsname_derivation():
    assert derive_clsname("bottle/test/broken_large/000.png") == "bottle"
    assert derive_clsname("data/x/bottle/test/good/1.png") == "bottle"
    with pytest.raises(ValueError, match="add a 'clsname'"):
        derive_clsname("test/good/1.png")


def test_derived_clsname_in_items(tree, tmp_path):
    root, metas, _, _ = tree
    assert _dataset(root, _write_meta(tmp_path / "m.json", metas))[1]["clsname"] == "a"


def test_mask_of_another_size_is_resized_nearest(tree, tmp_path):
    root, metas, _, _ = tree
    small = np.zeros((10, 15), np.uint8)
    small[2:6, 4:9] = 255
    _write_png(root / "a/ground_truth/crack/000_mask.png", small)
    item = _dataset(root, _write_meta(tmp_path / "m.json", metas))[2]
    expected = to_tensor(Image.fromarray(small).resize((SIZE[1], SIZE[0]), Image.NEAREST))
    assert torch.equal(item["mask"], expected)


def test_missing_image_names_file_and_line(tree, tmp_path):
    root, metas, _, _ = tree
    meta_file = _write_meta(tmp_path / "m.json", metas)
    os.remove(root / "a/test/good/000.png")
    with pytest.raises(FileNotFoundError, match=r"a/test/good/000\.png.*m\.json:2"):
        _dataset(root, meta_file)


def test_image_removed_after_construction_names_file_and_line(tree, tmp_path):
    root, metas, _, _ = tree
    dataset = _dataset(root, _write_meta(tmp_path / "m.json", metas))
    os.remove(root / "a/test/crack/000.png")
    with pytest.raises(FileNotFoundError, match=r"a/test/crack/000\.png.*m\.json:3"):
        dataset[2]


def test_missing_mask_names_file_and_line(tree, tmp_path):
    root, metas, _, _ = tree
    os.remove(root / "a/ground_truth/crack/000_mask.png")
    with pytest.raises(FileNotFoundError, match=r"maskname.*000_mask\.png.*m\.json:3"):
        _dataset(root, _write_meta(tmp_path / "m.json", metas))


def test_corrupt_image_names_file_and_line(tree, tmp_path):
    root, metas, _, _ = tree
    path = root / "a/test/good/000.png"
    path.write_bytes(path.read_bytes()[:40])  # truncated PNG
    dataset = _dataset(root, _write_meta(tmp_path / "m.json", metas))
    with pytest.raises(ValueError, match=r"cannot decode image file .*a/test/good/000\.png.*m\.json:2"):
        dataset[1]


def test_malformed_json_line_names_line_number(tree, tmp_path):
    root, metas, _, _ = tree
    meta_file = tmp_path / "m.json"
    meta_file.write_text(json.dumps(metas[0]) + "\n\n" + '{"filename": "a/x.png", "label": 0\n')
    with pytest.raises(ValueError, match=r"m\.json:3: malformed JSON"):
        _dataset(root, str(meta_file))


@pytest.mark.parametrize("line, message", [('["a.png", 0]', "string 'filename'"),
                                           ('{"filename": "a/b/c/d.png", "label": 2}', "'label' must be 0"),
                                           ('{"filename": "a/b/c/d.png", "label": 1, "maskname": 3}', "'maskname'")])
def test_bad_meta_values_name_line(tree, tmp_path, line, message):
    meta_file = tmp_path / "m.json"
    meta_file.write_text(line + "\n")
    with pytest.raises(ValueError, match=r"m\.json:1: .*" + message):
        _dataset(tree[0], str(meta_file))


def test_empty_and_missing_meta_file(tree, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.json is empty"):
        _dataset(tree[0], str(empty))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        _dataset(tree[0], str(tmp_path / "nope.json"))


def test_reader_modes_and_builder(tree):
    root, _, rgbs, _ = tree
    reader = build_image_reader({"type": "opencv", "kwargs": {"image_dir": str(root), "color_mode": "GRAY"}})
    gray = reader("a/test/good/000.png")
    assert gray.shape == (35, 50) and gray.dtype == np.uint8
    assert np.array_equal(OpenCVReader(str(root), "RGB")("a/test/good/000.png"), rgbs["a/test/good/000.png"])
    with pytest.raises(ValueError, match="color_mode"):
        OpenCVReader(str(root), "HSV")
    with pytest.raises(ValueError, match="opencv"):
        build_image_reader({"type": "pil", "kwargs": {}})


def test_joint_flip_and_rotation_keep_image_and_mask_aligned():
    image = Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3))
    mask = Image.fromarray(np.arange(16 * 16, dtype=np.uint8).reshape(16, 16))
    torch.manual_seed(0)
    for _ in range(8):
        out_image, out_mask = TrainBaseTransform([16, 16], hflip=True, vflip=True, rotate=True)(image, mask)
        # the mask's values are pixel ids: the image must have moved the same way
        ids = np.asarray(out_mask).astype(np.int64)
        assert np.array_equal(np.asarray(out_image), np.asarray(image).reshape(-1, 3)[ids])


def test_random_transforms_follow_torch_seed():
    image = Image.fromarray(_rgb(16, 16, 3))
    mask = Image.fromarray(np.zeros((16, 16), np.uint8))

    def run(seed):
        torch.manual_seed(seed)
        jitter = RandomColorJitter.from_params({})
        flips = [np.asarray(RandomHFlip()(image, mask)[0]) for _ in range(6)]
        angles = [np.asarray(RandomRotation()(image, mask)[0]) for _ in range(6)]
        return [np.asarray(jitter(image)) for _ in range(6)] + flips + angles

    first, again, other = run(1), run(1), run(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    with pytest.raises(ValueError, match="unknown keys"):
        RandomColorJitter.from_params({"brightnes": 0.1})


# ---------------------------------------------------------------- CIFAR-10

def _write_cifar(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                 "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), "filenames": ["x"] * per_batch}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    return folder


def test_cifar10_one_vs_rest(tmp_path):
    folder = _write_cifar(tmp_path, per_batch=12)
    normals = [0, 1, 2, 3, 4]
    train = CIFAR10(str(tmp_path), True, normals, input_size=[40, 40])
    test = CIFAR10(str(tmp_path), False, normals, input_size=40)
    train_labels = np.concatenate([load_batch(str(folder / f"data_batch_{i}"))["labels"] for i in range(1, 6)])
    assert len(train) == int(np.isin(train_labels, normals).sum())
    test_labels = np.asarray(load_batch(str(folder / "test_batch"))["labels"])
    n_normal = int(np.isin(test_labels, normals).sum())
    labels = [test[i]["label"] for i in range(len(test))]
    assert labels.count(0) == n_normal and labels.count(1) == min(n_normal, 12 - n_normal)
    item = test[0]
    assert item["image"].shape == (3, 40, 40) and item["mask"].shape == (1, 40, 40)
    assert (item["height"], item["width"], item["clsname"]) == (40, 40, "cifar")
    assert torch.all(item["mask"] == item["label"])
    index = test.indices[0]
    names = load_batch(str(folder / "batches.meta"))["label_names"]
    assert item["filename"] == f"{names[test_labels[index]]}/{index}.jpg"
    assert all(train[i]["label"] == 0 for i in range(len(train)))


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar10_refuses_pickles_with_code(tmp_path):
    folder = _write_cifar(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": _Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        CIFAR10(str(tmp_path), False, [0])
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        CIFAR10(str(tmp_path / "none"), True, [0])


# ---------------------------------------------------------------- samplers and loaders

@pytest.mark.parametrize("length", [0, 1, 2, 5, 8, 11])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_sampler_covers_every_index_once(length, world):
    shards = [list(ShardSampler(length, world, rank)) for rank in range(world)]
    assert sum(shards, []) == list(range(length))  # contiguous, in order, no padding, no duplicate
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(ShardSampler(length, world, r)) for r in range(world)] == list(map(len, shards))
    with pytest.raises(ValueError, match="rank"):
        ShardSampler(length, world, world)


def _cfg(root, meta_file, **train):
    return {"type": "custom", "image_reader": {"type": "opencv", "kwargs": {"image_dir": str(root), "color_mode": "RGB"}},
            "train": {"meta_file": meta_file, "hflip": False, "vflip": False, "rotate": False, **train},
            "test": {"meta_file": meta_file}, "input_size": SIZE, "pixel_mean": MEAN, "pixel_std": STD,
            "batch_size": 2, "workers": 0}


def test_build_dataloader_batches_and_does_not_mutate(tree, tmp_path):
    root, metas, _, _ = tree
    cfg = _cfg(root, _write_meta(tmp_path / "m.json", metas), colorjitter={"prob": 1.0})
    before = copy.deepcopy(cfg)
    train_loader, test_loader = build_dataloader(cfg, distributed=False, seed=3)
    assert cfg == before
    assert isinstance(train_loader.sampler, DistributedSampler) and isinstance(test_loader.sampler, ShardSampler)
    assert train_loader.dataset.colorjitter_fn is not None and test_loader.dataset.colorjitter_fn is None
    batch = next(iter(test_loader))
    assert batch["filename"] == [m["filename"] for m in metas[:2]]
    assert batch["image"].shape == (2, 3, *SIZE) and batch["mask"].shape == (2, 1, *SIZE)
    assert batch["label"].dtype == torch.int64 and batch["height"].tolist() == [40, 35]
    assert not train_loader.pin_memory and train_loader.num_workers == 0


def test_build_dataloader_optional_sections_and_errors(tree, tmp_path):
    root, metas, _, _ = tree
    cfg = _cfg(root, _write_meta(tmp_path / "m.json", metas))
    del cfg["train"]
    assert build_dataloader(cfg, distributed=False)[0] is None
    with pytest.raises(ValueError, match="dataset.type='mvtec'"):
        build_dataloader({**cfg, "type": "mvtec"}, distributed=False)
    with pytest.raises(RuntimeError, match="process group"):
        build_dataloader(cfg, distributed=True)


def test_training_order_depends_only_on_seed_and_epoch(tmp_path):
    root = tmp_path / "images"
    metas = []
    for i in range(12):
        _write_png(root / f"c/train/good/{i:03d}.png", _rgb(8, 8, i))
        metas.append({"filename": f"c/train/good/{i:03d}.png", "label": 0})
    meta_file = _write_meta(tmp_path / "m.json", metas)

    def order(seed, epoch):
        sampler = build_dataloader(_cfg(root, meta_file), distributed=False, seed=seed)[0].sampler
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(5, 0) == order(5, 0) and order(5, 3) == order(5, 3)
    assert sorted(order(5, 0)) == list(range(12))
    assert order(5, 0) != order(5, 1) and order(5, 0) != order(6, 0)
