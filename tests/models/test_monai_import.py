"""MONAI imports without matplotlib, most of scipy, pandas, requests and jsonschema; what twoview uses still works."""

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
    from models.monai_import import SKIPPED
    assert "monai" in sys.modules
    assert not [name for name in SKIPPED if name in sys.modules], "MONAI's import loaded a skipped module"
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
    for name in SKIPPED:  # afterwards, for anyone, as usual
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
