"""MONAI imports without matplotlib, most of scipy, pandas, requests and jsonschema, pydicom without requests;
what twoview uses still works."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import pipeline.explain, pipeline.transforms, models.twoview
    from models.config import ModelConfig
    from models.lean_imports import SKIPPED
    assert "monai" in sys.modules
    skipped = sorted({name for names in SKIPPED.values() for name in names})
    assert not [name for name in skipped if name in sys.modules], "MONAI's import loaded a skipped module"
    net = models.twoview.TwoViewNet(ModelConfig.tiny())
    image = torch.rand(1, 1, 64, 64)
    masks = torch.tensor([True]), torch.tensor([True])
    assert net(image, image, *masks).final.shape == (1, len(net.config.labels))
    assert pipeline.transforms.augment_transform(ModelConfig.tiny())(image[0]).shape == (1, 64, 64)
    film = torch.rand(300, 200).numpy()
    assert pipeline.transforms.preprocess(film, ModelConfig.tiny()).shape == (1, 64, 64)
    heat = pipeline.explain.Explainer(net).heatmap("frontal", net.config.labels[0], film, film)
    assert heat.shape == film.shape
    import importlib
    for name in skipped:  # afterwards, for anyone, as usual
        assert importlib.import_module(name) is not None
    print("ok")
    """
)


def test_monai_imports_lean_and_works():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_a_module_imported_before_monai_is_left_alone():
    script = "import pandas, models.twoview, sys; assert sys.modules['pandas'] is not None; print('ok')"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


PYDICOM = textwrap.dedent(
    """
    import sys
    import pipeline.dicom
    from pydicom.data import download, get_testdata_file
    assert "pydicom" in sys.modules and "requests" not in sys.modules, "pydicom's import loaded requests"
    assert not download.HAVE_REQUESTS  # pydicom would fetch its own test files through urllib
    image = pipeline.dicom.read_image(get_testdata_file("RG1_J2KR.dcm"), target_size=448)
    assert image.reduction == 4 and image.pixels.max() == 1.0  # the real film, through openjpeg
    import requests  # afterwards, as usual
    print("ok")
    """
)


def test_pydicom_imports_without_requests_and_reads_a_film():
    done = subprocess.run([sys.executable, "-c", PYDICOM], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
