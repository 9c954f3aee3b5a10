"""Synthetic defects for the demo data, each returning the defective image and its exact mask.

Every function takes an RGB float32 image in [0, 1] (HxWx3), a numpy Generator and a `centre`
(x, y), and returns `(image, mask)` with mask uint8 HxW in {0, 255}: the mask is exactly the set of
pixels the defect changed (blend weight > 0). Sizes are given for a 256-pixel image and scale with it.
The defects keep the local brightness range (no saturated outliers), so a raw pixel difference does not
find them, while their texture / structure differs from the normal images.
"""
import cv2
import numpy as np

ALPHA_FLOOR = 0.04  # blend weights below this are dropped, so the mask is exactly the changed pixels


def blob_mask(shape, centre, radius, rng, roughness=0.25):
    """uint8 {0,1} mask of an irregular closed blob: a circle whose radius varies with 3 random harmonics."""
    angles = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
    wobble = sum(rng.uniform(-roughness, roughness) / k * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
                 for k in (2, 3, 5))
    radii = radius * (1.0 + wobble) * rng.uniform(0.7, 1.0, size=1)
    stretch, turn = rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
    x, y = radii * np.cos(angles), radii * np.sin(angles) * stretch
    points = np.stack([x * np.cos(turn) - y * np.sin(turn) + centre[0],
                       x * np.sin(turn) + y * np.cos(turn) + centre[1]], axis=1)
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask


def soft_alpha(mask, sigma):
    """Feathered blend weights in [0, 1] from a {0,1} mask; tiny weights are cut to zero."""
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma) if sigma > 0 else mask.astype(np.float32)
    alpha[alpha < ALPHA_FLOOR] = 0.0
    return alpha


def blend(image, layer, alpha):
    """(image with `layer` blended in by `alpha` (HxW), mask of the changed pixels)."""
    out = image * (1.0 - alpha[..., None]) + layer * alpha[..., None]
    return out.astype(np.float32), np.where(alpha > 0, 255, 0).astype(np.uint8)


def _scale(image):
    return image.shape[0] / 256.0


def _local_mean(image, centre, radius):
    h, w = image.shape[:2]
    x0, y0 = max(int(centre[0] - radius), 0), max(int(centre[1] - radius), 0)
    patch = image[y0:min(int(centre[1] + radius), h), x0:min(int(centre[0] + radius), w)]
    return patch.reshape(-1, 3).mean(axis=0)


def scratch(image, rng, centre):
    """A curved line (quadratic Bezier, 4-6.5 px at 256: wide enough to reach stride-16 features) 40 %
    lighter or darker than the surface around it."""
    s = _scale(image)
    length, angle = rng.uniform(60, 130) * s, rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    p0, p2 = np.asarray(centre) - direction * length / 2, np.asarray(centre) + direction * length / 2
    p1 = np.asarray(centre) + np.array([-direction[1], direction[0]]) * rng.uniform(-0.35, 0.35) * length
    t = np.linspace(0, 1, 48)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.polylines(mask, [np.round(curve).astype(np.int32)], False, 1, max(1, int(round(rng.uniform(4, 6.5) * s))))
    tone = _local_mean(image, centre, 20 * s) * rng.choice([0.6, 1.4])
    layer = np.broadcast_to(np.clip(tone, 0.05, 0.95), image.shape)
    return blend(image, layer, mask * rng.uniform(0.65, 0.85))


def hole(image, rng, centre):
    """Missing material: an irregular patch where the surface texture is gone, showing a smooth, slightly
    darker substrate (10-25 %) with a soft shadow towards one side."""
    s = _scale(image)
    mask = blob_mask(image.shape[:2], centre, rng.uniform(12, 24) * s, rng)
    substrate = cv2.GaussianBlur(image, (0, 0), 6 * s) * rng.uniform(0.75, 0.9)
    shade = np.linspace(0.85, 1.1, image.shape[0], dtype=np.float32)[:, None, None]
    return blend(image, np.clip(substrate * shade, 0, 1), soft_alpha(mask, 1.0 * s))


def stain(image, rng, centre):
    """A translucent colour stain (oil / rust / ink tint) that keeps the texture underneath visible."""
    s = _scale(image)
    mask = blob_mask(image.shape[:2], centre, rng.uniform(14, 28) * s, rng, roughness=0.35)
    tint = np.array(rng.choice([[0.45, 0.30, 0.12], [0.15, 0.22, 0.45], [0.40, 0.40, 0.10], [0.35, 0.12, 0.30]]))
    luminance = image.mean(axis=2, keepdims=True)
    layer = np.clip(luminance * tint / tint.mean(), 0, 1)  # same brightness, other colour
    return blend(image, layer, soft_alpha(mask, 2.0 * s) * rng.uniform(0.6, 0.8))


def foreign_object(image, rng, centre, other):
    """A particle of another material: a blob cut from the photograph `other` (HxWx3 float, at least the
    image's size), its mean colour moved onto the surface's so only its texture and shape differ."""
    s = _scale(image)
    h, w = image.shape[:2]
    mask = blob_mask((h, w), centre, rng.uniform(9, 18) * s, rng)
    shift = int(centre[0] - w // 2), int(centre[1] - h // 2)
    crops = []
    for _ in range(4):  # prefer a textured piece: the most varied of 4 random crops
        oy, ox = rng.integers(0, other.shape[0] - h + 1), rng.integers(0, other.shape[1] - w + 1)
        crops.append(np.roll(other[oy:oy + h, ox:ox + w], shift=(shift[1], shift[0]), axis=(0, 1)))
    patch = max(crops, key=lambda crop: float(crop[mask > 0].std()))
    patch = patch + (_local_mean(image, centre, 20 * s) - patch[mask > 0].mean(axis=0))
    return blend(image, np.clip(patch, 0, 1).astype(np.float32), soft_alpha(mask, 0.7 * s))


def misplaced_patch(image, rng, centre):
    """Cut-and-paste: a blob of the same image from elsewhere, rotated and magnified 3-4x (a coarser copy
    of the surface or an oversized part), pasted at `centre`."""
    s = _scale(image)
    h, w = image.shape[:2]
    mask = blob_mask((h, w), centre, rng.uniform(15, 26) * s, rng)
    source = (rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h)
    matrix = cv2.getRotationMatrix2D(source, float(rng.choice([90, 180, 270]) + rng.uniform(-20, 20)),
                                     rng.uniform(3.0, 4.0))
    matrix[:, 2] += np.asarray(centre) - np.asarray(source)  # move the source point onto the centre
    layer = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return blend(image, layer, soft_alpha(mask, 0.8 * s))


DEFECTS = {"scratch": scratch, "hole": hole, "stain": stain, "foreign_object": foreign_object,
           "misplaced": misplaced_patch}
