"""Files in, results out: DICOM reading, studies, data, prediction, training and the CLI."""

from models import lean_imports

lean_imports.install()  # before any of our modules imports MONAI or pydicom
