"""Grad-CAM overlays as DICOM Secondary Capture images, labelled in the pixels and the header as not for diagnosis.

One image per positive call and view: the radiograph with the heatmap of the head that gave the final
prediction blended in, at most `MAX_SIDE` pixels on its long side, with a burned-in banner.
"""

from __future__ import annotations

import numpy as np
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

from pipeline.explain import Explainer
from pipeline.overlay import overlay
from pipeline.views import View

__all__ = ["HEATMAP_SERIES_DESCRIPTION", "HEATMAP_SERIES_NUMBER", "MAX_SIDE", "heatmap_capture"]

HEATMAP_SERIES_DESCRIPTION = "twoview Grad-CAM (NOT FOR DIAGNOSIS)"
HEATMAP_SERIES_NUMBER = 991
MAX_SIDE = 1024


def heatmap_capture(
    explainer: Explainer,
    view: View,
    label: str,
    images: dict[View, np.ndarray | None],
    reference: Dataset,
    *,
    series_uid: str,
    sop_uid: str,
    instance_number: int,
) -> SCImage:
    """The Secondary Capture of `label`'s heatmap on `view` (pixels of both views as `read_image` gives them)."""
    heat = explainer.heatmap(view, label, images[View.FRONTAL], images[View.LATERAL])
    picture = _fit((overlay(images[view], heat) * 255 + 0.5).astype(np.uint8))
    banner = f"NOT FOR DIAGNOSIS - twoview Grad-CAM: {label.replace('_', ' ')} ({view.value})"
    sc = SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=_burn_in(picture, banner),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=HEATMAP_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer="twoview",
        patient_orientation=("L", "F") if view is View.FRONTAL else ("A", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.SeriesDescription = HEATMAP_SERIES_DESCRIPTION
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = "CHEST"  # unpaired: no Laterality (Type 2C)
    sc.ImageComments = (
        f"{banner}. Research output of an AI model; it shows where the model looked, not a finding."
    )
    return sc


def _fit(picture: np.ndarray) -> np.ndarray:
    """At most MAX_SIDE on the long side (every n-th pixel: the overlay is a guide, not a diagnostic image)."""
    step = max(1, -(-max(picture.shape[:2]) // MAX_SIDE))
    return np.ascontiguousarray(picture[::step, ::step])


def _burn_in(picture: np.ndarray, text: str) -> np.ndarray:
    """The picture with a black banner across the top holding `text` in white."""
    image = Image.fromarray(picture, "RGB")
    size = max(10, image.width // 40)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width, int(size * 1.6)), fill=(0, 0, 0))
    draw.text((size // 3, size // 4), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)
