"""Joint image + mask transforms on PIL images (the original `datasets/transforms.py` and
`base_dataset.py` transforms).

Randomness comes from torch's global RNG only (`torch.rand`, `torch.randint`, `torch.randperm`), so a
run is reproducible from the torch seed: in the main process directly, and in DataLoader workers because
each worker's torch seed is drawn from the main process's torch RNG when the iterator starts.
"""
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode, Resize

COLORJITTER_DEFAULTS = {"brightness": 0.1, "contrast": 0.5, "saturation": 0.5, "hue": 0.07, "prob": 0.5}


def _coin(p):
    """True with probability `p`, drawn from torch's RNG."""
    return bool(torch.rand(()) < p)


def _uniform(low, high):
    return float(low + (high - low) * torch.rand(()))


class RandomHFlip:
    """Flip image and mask left-right together with probability `p`."""

    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, image, mask):
        if _coin(self.p):
            return TF.hflip(image), TF.hflip(mask)
        return image, mask


class RandomVFlip:
    """Flip image and mask top-bottom together with probability `p`."""

    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, image, mask):
        if _coin(self.p):
            return TF.vflip(image), TF.vflip(mask)
        return image, mask


class RandomRotation:
    """Rotate image and mask together by an angle chosen uniformly from `angles` (degrees).

    Nearest-neighbour resampling for both, as the original (its `resample=False` means NEAREST);
    multiples of 90 on square images are exact pixel permutations.
    """

    def __init__(self, angles=(0, 90, 180, 270)):
        self.angles = list(angles)

    def __call__(self, image, mask):
        angle = self.angles[int(torch.randint(len(self.angles), ()))]
        if angle == 0:
            return image, mask
        nearest = InterpolationMode.NEAREST
        return TF.rotate(image, angle, interpolation=nearest), TF.rotate(mask, angle, interpolation=nearest)


class RandomColorJitter:
    """Image-only colour jitter: each of brightness / contrast / saturation / hue is applied with
    probability `prob`, in a random order (POD style, as the original).

    Factors: brightness, contrast, saturation uniform in [max(0, 1 - v), 1 + v]; hue shift uniform in
    [-hue, hue] (hue must be in [0, 0.5]).
    """

    def __init__(self, brightness=0.1, contrast=0.5, saturation=0.5, hue=0.07, prob=0.5):
        if not 0 <= hue <= 0.5:
            raise ValueError(f"colorjitter.hue={hue} must be in [0, 0.5]")
        self.ops = [("brightness", brightness), ("contrast", contrast), ("saturation", saturation), ("hue", hue)]
        self.prob = prob

    @classmethod
    def from_params(cls, params):
        """Build from a config dict; missing keys take the original defaults (COLORJITTER_DEFAULTS)."""
        unknown = set(params) - set(COLORJITTER_DEFAULTS)
        if unknown:
            raise ValueError(f"colorjitter has unknown keys {sorted(unknown)}; known: {sorted(COLORJITTER_DEFAULTS)}")
        return cls(**{**COLORJITTER_DEFAULTS, **params})

    def __call__(self, image):
        for index in torch.randperm(len(self.ops)).tolist():
            name, value = self.ops[index]
            if value and _coin(self.prob):
                image = _adjust(image, name, value)
        return image


def _adjust(image, name, value):
    if name == "hue":
        return TF.adjust_hue(image, _uniform(-value, value))
    factor = _uniform(max(0.0, 1.0 - value), 1.0 + value)
    adjust = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
              "saturation": TF.adjust_saturation}[name]
    return adjust(image, factor)


class TestBaseTransform:
    """Resize image (PIL bilinear, antialiased) and mask (nearest) to `input_size` = [h, w]."""

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, input_size):
        self.resize_image = Resize(list(input_size), InterpolationMode.BILINEAR)
        self.resize_mask = Resize(list(input_size), InterpolationMode.NEAREST)

    def __call__(self, image, mask):
        return self.resize_image(image), self.resize_mask(mask)


class TrainBaseTransform(TestBaseTransform):
    """Resize as TestBaseTransform, then the enabled joint augmentations in the original order:
    horizontal flip, vertical flip, rotation by a multiple of 90 degrees."""

    def __init__(self, input_size, hflip=False, vflip=False, rotate=False):
        super().__init__(input_size)
        self.augments = [aug for flag, aug in ((hflip, RandomHFlip()), (vflip, RandomVFlip()),
                                               (rotate, RandomRotation([0, 90, 180, 270]))) if flag]

    def __call__(self, image, mask):
        image, mask = super().__call__(image, mask)
        for augment in self.augments:
            image, mask = augment(image, mask)
        return image, mask
