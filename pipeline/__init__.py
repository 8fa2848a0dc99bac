"""Files in, results out: DICOM reading, studies, data, prediction, training and the CLI."""

from models import monai_import

monai_import.install()  # before any of our modules imports MONAI (pipeline.explain does, first thing)
