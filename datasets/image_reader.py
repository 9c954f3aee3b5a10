"""Image readers: file name (relative to an image folder) -> numpy uint8 array.

Only the OpenCV reader exists, as in the original (`image_reader.type: opencv`).
"""
import os

import cv2
import numpy as np

COLOR_MODES = ("RGB", "BGR", "GRAY")


class OpenCVReader:
    """Read images with OpenCV from `image_dir`.

    `__call__(filename, is_mask=False)` returns HxWx3 uint8 (RGB or BGR by `color_mode`) or HxW uint8
    (`color_mode: GRAY`, and always for masks, which are read as grayscale).
    """

    def __init__(self, image_dir, color_mode="RGB"):
        if color_mode not in COLOR_MODES:
            raise ValueError(f"image_reader color_mode={color_mode!r} is not one of {COLOR_MODES}")
        self.image_dir = str(image_dir)
        self.color_mode = color_mode

    def path(self, filename):
        """The full path of `filename` (a path relative to `image_dir`)."""
        return os.path.join(self.image_dir, filename)

    def __call__(self, filename, is_mask=False):
        path = self.path(filename)
        flag = cv2.IMREAD_GRAYSCALE if is_mask or self.color_mode == "GRAY" else cv2.IMREAD_COLOR
        image = decode_image_file(path, flag)
        if image.ndim == 3 and self.color_mode == "RGB":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return image


def decode_image_file(path, flag):
    """Decode one image file with OpenCV; clear errors for missing and undecodable files.

    Reading the bytes with numpy and decoding with `cv2.imdecode` behaves as `cv2.imread` does, but
    also works for non-ASCII paths on every platform.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path} (check the path and image_reader.kwargs.image_dir)")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, flag) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image file {path}: it is empty, truncated, corrupt or not an image; "
                         "replace the file or remove it from the meta file")
    return image


def build_image_reader(cfg_reader):
    """Build a reader from the config section `{type: opencv, kwargs: {image_dir, color_mode}}`."""
    reader_type = cfg_reader.get("type", "opencv")
    if reader_type != "opencv":
        raise ValueError(f"image_reader.type={reader_type!r} is unknown; the only reader is 'opencv'")
    return OpenCVReader(**dict(cfg_reader.get("kwargs", {})))
