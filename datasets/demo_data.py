"""The embedded demo dataset: MVTec-like classes made offline from photographs shipped in installed
packages (scikit-image's `skimage.data`, scikit-learn's sample images).

Normal images show one source photo per class as a fixed inspection station would: the same view with
sub-token pose jitter (a few pixels of shift, half a degree, 1 % scale) and strong light changes between
shots (gain, contrast, colour cast, sensor noise). Defective test images add one synthetic defect
(datasets/defects.py) with its exact mask. The balance is deliberate: light changes and pixel-level
misalignment defeat a raw-pixel detector (`raw_pixel_baseline`), while ImageNet features at stride 16
barely move, so a feature-reconstruction model (UniAD) learns the normal appearance within the few
thousand CPU steps of `make demo`. Layout and meta files follow MVTec-AD:
`<cls>/train/good/000.png`, `<cls>/test/<defect>/000.png`, `<cls>/ground_truth/<defect>/000_mask.png`,
`train.json` / `test.json` (filename relative to the output folder).
"""
import importlib.util
import os
import shutil
import time

import cv2
import numpy as np

from datasets.defects import DEFECTS
from datasets.meta_builders import build_mvtec_meta, read_meta

# class -> source photo, view centre and window side in source pixels (the window is mapped to `size`)
CLASSES = {
    "brick": {"source": "brick", "window": 256, "centre": (256, 256)},
    "grass": {"source": "grass", "window": 256, "centre": (256, 256)},
    "gravel": {"source": "gravel", "window": 256, "centre": (256, 256)},
    "cat": {"source": "chelsea", "window": 280, "centre": (225, 150)},
    "coins": {"source": "coins", "window": 190, "centre": (150, 135)},
}
# gray textures get a fixed colour ramp (dark RGB, light RGB in [0, 1])
COLOUR_RAMPS = {"brick": ((0.17, 0.08, 0.07), (0.86, 0.55, 0.43)), "grass": ((0.06, 0.16, 0.03), (0.66, 0.84, 0.36)),
                "gravel": ((0.14, 0.13, 0.11), (0.85, 0.81, 0.73)), "coins": ((0.10, 0.09, 0.07), (0.93, 0.80, 0.58))}
FOREIGN_SOURCES = ("astronaut", "rocket", "china", "flower")
# Pose jitter between shots. Larger jitter (MVTec-like free crops, +-4 % shifts, 180 degree turns) leaves
# a briefly trained UniAD near chance on image level; smaller makes the raw-pixel baseline strong.
POSE_SHIFT = 0.008  # shift up to 0.8 % of the image side (2 px at 256)
POSE_ROTATE = 0.5  # degrees
POSE_SCALE = 0.01
# Light changes between shots: gain and contrast +-20 %, colour cast +-4 %, sensor noise sigma 1.5/255.
LIGHT_GAIN, LIGHT_CAST, SENSOR_NOISE = 0.20, 0.04, 1.5 / 255.0
DEFECT_REGION = 0.30  # defect centres within +-30 % of the image side around the centre


def load_source(name):
    """RGB float32 [0, 1] HxWx3 of a bundled photograph (skimage.data or sklearn sample images)."""
    if name in ("china", "flower"):
        image = _sklearn_sample_image(name)
    else:
        import skimage.data
        image = getattr(skimage.data, name)()
    image = image.astype(np.float32) / 255.0
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image[..., :3]


def _sklearn_sample_image(name):
    """scikit-learn's bundled `<name>.jpg` as RGB uint8, read from the package folder directly
    (importing sklearn costs seconds; `find_spec` locates it without importing)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("scikit-learn is not installed; it ships the china/flower sample photos (pip install scikit-learn)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "images", f"{name}.jpg")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"scikit-learn sample image not found: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def colourise(image, ramp):
    """Map a gray image (HxWx3 equal channels) through a dark->light colour ramp."""
    dark, light = (np.asarray(c, np.float32) for c in ramp)
    return dark + image[..., :1] * (light - dark)


def prepare_source(clsname, size):
    """The class's source photo, coloured, rescaled so that its crop window spans `size` pixels."""
    spec = CLASSES[clsname]
    image = load_source(spec["source"])
    if clsname in COLOUR_RAMPS:
        image = colourise(image, COLOUR_RAMPS[clsname])
    factor = size / spec["window"]
    resized = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA if factor < 1
                         else cv2.INTER_LINEAR)
    centre = np.asarray(spec["centre"], np.float64) * factor
    return resized, centre


def sample_pose(rng, centre, size):
    """Inverse affine map output -> source: the view around `centre` with a small random pose change."""
    angle = np.deg2rad(rng.uniform(-POSE_ROTATE, POSE_ROTATE))
    scale = rng.uniform(1.0 - POSE_SCALE, 1.0 + POSE_SCALE)
    centre = centre + rng.uniform(-POSE_SHIFT, POSE_SHIFT, 2) * size
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    linear = np.array([[cos, -sin], [sin, cos]])
    offset = np.asarray(centre) - linear @ np.array([size / 2, size / 2])
    return np.hstack([linear, offset[:, None]])


def render_normal(rng, source, centre, size):
    """One normal image (float32 HxWx3 [0,1], before photometric variation)."""
    matrix = sample_pose(rng, centre, size)
    return cv2.warpAffine(source, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)


def photometric(image, rng):
    """Light changes between shots: gain, contrast, colour cast, sensor noise."""
    gain, contrast = rng.uniform(1.0 - LIGHT_GAIN, 1.0 + LIGHT_GAIN, 2)
    cast = rng.uniform(1.0 - LIGHT_CAST, 1.0 + LIGHT_CAST, 3).astype(np.float32)
    mean = image.mean()
    out = ((image - mean) * contrast + mean) * gain * cast
    out = out + rng.normal(0.0, SENSOR_NOISE, image.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def to_uint8_bgr(image):
    return cv2.cvtColor(np.round(image * 255.0).astype(np.uint8), cv2.COLOR_RGB2BGR)


def defect_centre(rng, size):
    return tuple(size / 2 + rng.uniform(-DEFECT_REGION, DEFECT_REGION, 2) * size)


def make_defective(rng, image, defect, size, foreign):
    """(defective image, mask) with a non-empty mask, retrying the rare empty draw."""
    for _ in range(10):
        kwargs = {"other": foreign[int(rng.integers(len(foreign)))]} if defect == "foreign_object" else {}
        out, mask = DEFECTS[defect](image, rng, defect_centre(rng, size), **kwargs)
        if mask.any():
            return out, mask
    raise RuntimeError(f"defect {defect} produced an empty mask 10 times; use a larger --size")


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, array):
        raise OSError(f"could not write {path}")


def generate_class(out_dir, clsname, class_index, seed, n_train, n_test, size, foreign):
    """Write one class's train and test images (and masks) under `out_dir/clsname`."""
    rng = np.random.default_rng([seed, class_index])
    source, centre = prepare_source(clsname, size)
    base = os.path.join(out_dir, clsname)
    for i in range(n_train):
        image = photometric(render_normal(rng, source, centre, size), rng)
        write_png(os.path.join(base, "train", "good", f"{i:03d}.png"), to_uint8_bgr(image))
    n_good, names, counters = n_test - n_test // 2, list(DEFECTS), dict.fromkeys(DEFECTS, 0)
    for i in range(n_test):
        image = render_normal(rng, source, centre, size)
        kind = "good" if i < n_good else names[(i - n_good) % len(names)]
        index = i if kind == "good" else counters[kind]
        if kind != "good":
            image, mask = make_defective(rng, image, kind, size, foreign)
            write_png(os.path.join(base, "ground_truth", kind, f"{index:03d}_mask.png"), mask)
            counters[kind] += 1
        write_png(os.path.join(base, "test", kind, f"{index:03d}.png"), to_uint8_bgr(photometric(image, rng)))


def foreign_sources(size):
    """Photos for foreign-object defects, each at least `size` x `size`."""
    out = []
    for name in FOREIGN_SOURCES:
        image = load_source(name)
        factor = max(size / min(image.shape[:2]), 0.5)
        out.append(cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA))
    return out


def generate_demo(out_dir, seed=0, n_train=50, n_test=30, size=256, classes=None):
    """Write the demo dataset to `out_dir` (replacing earlier demo class folders there).

    About half of each class's `n_test` test images are defective, cycling through the defect types.
    Returns the per-class counts of `build_mvtec_meta`.
    """
    classes = list(CLASSES) if classes is None else list(classes)
    unknown = set(classes) - set(CLASSES)
    if unknown or n_train < 1 or n_test < 2 or size < 64:
        raise ValueError(f"generate_demo needs classes from {list(CLASSES)} (got unknown {sorted(unknown)}), "
                         f"n_train >= 1, n_test >= 2, size >= 64; got {n_train}, {n_test}, {size}")
    os.makedirs(out_dir, exist_ok=True)
    for clsname in classes:
        shutil.rmtree(os.path.join(out_dir, clsname), ignore_errors=True)
    foreign = foreign_sources(size)
    for clsname in classes:
        generate_class(out_dir, clsname, list(CLASSES).index(clsname), seed, n_train, n_test, size, foreign)
    with open(os.path.join(out_dir, "README"), "w", encoding="utf-8") as handle:
        handle.write(README_TEXT)
    return build_mvtec_meta(out_dir, out_dir)


def make_demo_data(out_dir, seed=0, **kwargs):
    """generate_demo plus a one-line summary string (classes, images, seconds)."""
    start = time.perf_counter()
    counts = generate_demo(out_dir, seed, **kwargs)
    n_train = sum(row["train"] for row in counts.values())
    n_good = sum(row["test_good"] for row in counts.values())
    n_bad = sum(row["test_defective"] for row in counts.values())
    return (f"demo data: {len(counts)} classes ({', '.join(counts)}), {n_train} train, {n_good} good + {n_bad} "
            f"defective test images in {out_dir} ({time.perf_counter() - start:.1f} s, seed {seed})")


# ---------------------------------------------------------------- raw-pixel baseline

def _read_rgb(root, filename):
    image = cv2.imread(os.path.join(root, filename), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read {os.path.join(root, filename)}")
    return image.astype(np.float32) / 255.0


def _auroc(labels, scores):
    """Exact AUROC (ties count one half) by the rank statistic: P(score_pos > score_neg) over all pairs.
    Below 0.5 it is replaced by 1 - AUROC, the original's rule. Sorting only the negatives keeps it fast
    for millions of pixels."""
    labels, scores = np.asarray(labels, bool).ravel(), np.asarray(scores).ravel()
    negatives, positives = np.sort(scores[~labels]), scores[labels]
    if not len(negatives) or not len(positives):
        raise ValueError("AUROC needs both normal and anomalous samples")
    below = np.searchsorted(negatives, positives, "left").sum(dtype=np.float64)
    below_or_tied = np.searchsorted(negatives, positives, "right").sum(dtype=np.float64)
    value = (below + below_or_tied) / 2.0 / (len(negatives) * len(positives))
    return max(value, 1.0 - value)


def raw_pixel_baseline_per_class(root):
    """{clsname: (image AUROC, pixel AUROC)} of the raw-pixel detector: anomaly map = per-pixel mean
    absolute RGB difference from the class's mean training image; image score = max of the map."""
    train, test = read_meta(os.path.join(root, "train.json")), read_meta(os.path.join(root, "test.json"))
    results = {}
    for clsname in dict.fromkeys(entry["clsname"] for entry in test):
        mean = np.mean([_read_rgb(root, e["filename"]) for e in train if e["clsname"] == clsname], axis=0)
        entries = [e for e in test if e["clsname"] == clsname]
        maps = [np.abs(_read_rgb(root, e["filename"]) - mean).mean(axis=2) for e in entries]
        masks = [cv2.imread(os.path.join(root, e["maskname"]), cv2.IMREAD_GRAYSCALE) > 0 if "maskname" in e
                 else np.zeros(m.shape, bool) for e, m in zip(entries, maps)]
        image_auc = _auroc([e["label"] for e in entries], [m.max() for m in maps])
        pixel_auc = _auroc(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
        results[clsname] = (image_auc, pixel_auc)
    return results


def raw_pixel_baseline(root):
    """(mean image AUROC, mean pixel AUROC) over classes of the raw-pixel detector on `root`."""
    per_class = raw_pixel_baseline_per_class(root)
    return (float(np.mean([v[0] for v in per_class.values()])), float(np.mean([v[1] for v in per_class.values()])))


README_TEXT = """\
UniAD demo dataset (generated by tools/make_demo_data.py; do not edit, regenerate instead)

Five MVTec-AD-like classes made offline from photographs shipped inside installed Python packages:
  brick, grass, gravel  textures: the centre of scikit-image's gray 512x512 textures, coloured
  cat, coins            objects: Chelsea the cat (scikit-image `chelsea`) and the Pompeii coins
                        (scikit-image `coins`, coloured)
Every class is one view seen as by a fixed inspection camera: normal images differ by a few pixels of
pose jitter and by strong light changes (gain, contrast, colour cast) and sensor noise. Defective test
images carry one synthetic defect each, with its exact pixel mask: scratch, hole (missing material),
stain (colour shift), foreign_object (a piece of another photograph: astronaut, rocket, china,
flower), misplaced (a rotated, magnified piece of the same image pasted elsewhere).
Layout: <cls>/train/good/NNN.png, <cls>/test/{good,<defect>}/NNN.png,
<cls>/ground_truth/<defect>/NNN_mask.png; meta files train.json / test.json (JSON lines).

Sources and licences
  scikit-image data (skimage/data in the scikit-image wheel; licences as stated in skimage.data):
    brick   CC0 (CC0Textures, Bricks25)
    grass   CC0 (DeviantArt, linolafett "Grass-01")
    gravel  CC0 (CC0Textures, Gravel04)
    coins   Brooklyn Museum Collection, no known copyright restrictions
    chelsea CC0, photographer Stefan van der Walt
    astronaut  NASA, public domain
    rocket  SpaceX, public domain
  scikit-learn sample images (sklearn/datasets/images, see its README.txt):
    china.jpg   CC BY 2.0, danielbuechele (Flickr), retrieved by Robert Layton
    flower.jpg  CC BY 2.0, vultilion (Flickr), retrieved by Robert Layton
  The generated images are derivative works of these photographs; the CC BY 2.0 images (china,
  flower) appear only as small foreign-object patches and require the attribution above.
"""
