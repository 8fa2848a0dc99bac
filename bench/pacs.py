"""A round trip through a real Orthanc: the 24 sample studies up, `predict --dicomweb --store`, SRs back.

Starts Orthanc with its DICOMweb plugin on 127.0.0.1 (a throw-away storage folder), uploads the
sample studies, then times in one run: `predict_folder` on the local folder (the same studies, the
same model), with and without writing an SR per study, and `predict_pacs` against Orthanc (QIDO-RS, WADO-RS a chunk at a time, prediction,
STOW-RS of one SR per study), and a rerun that finds everything done. Needs the Debian packages
`orthanc` and `orthanc-dicomweb`.

    python bench/pacs.py [--model demo] [--chunk 16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from models.checkpoint import load
from pipeline.dicom_results import DicomResults
from pipeline.dicomweb import PASSWORD_ENV, USER_ENV, Pacs
from pipeline.pacs import predict_pacs, working_folder
from pipeline.predict import DEMO_MODEL, Predictor, predict_folder
from pipeline.sr import ModelIdentity
from tests.pipeline.orthanc import PASSWORD, USER, Orthanc

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data" / "studies"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--chunk", type=int, default=16)
    args = parser.parse_args()
    model = load(args.model)
    predictor = Predictor(model)
    identity = ModelIdentity.from_checkpoint(args.model, model.config)
    files = sorted(p for p in SAMPLES.rglob("*") if p.is_file() and p.suffix != ".csv")
    print(f"{len(os.sched_getaffinity(0))} cores; model {Path(args.model).name}; {len(files)} files")
    with tempfile.TemporaryDirectory(prefix="twoview-pacs-") as tmp:
        tmp = Path(tmp)
        server = Orthanc(tmp / "orthanc").start()
        try:
            start = time.perf_counter()
            server.upload(files)
            upload = time.perf_counter() - start

            start = time.perf_counter()
            local = predict_folder(SAMPLES, tmp / "local.csv", args.model, predictor=predictor)
            local_s = time.perf_counter() - start
            start = time.perf_counter()
            sink = DicomResults(tmp / "sr", identity, model.config.thresholds)
            predict_folder(SAMPLES, tmp / "local-sr.csv", args.model, predictor=predictor, sink=sink)
            local_sr = time.perf_counter() - start

            os.environ.update({USER_ENV: USER, PASSWORD_ENV: PASSWORD})
            pacs = Pacs.from_env(server.dicomweb)
            out = tmp / "pacs.csv"
            results = DicomResults(working_folder(out) / "outbox", identity, model.config.thresholds)
            start = time.perf_counter()
            summary = predict_pacs(
                pacs, out, predictor, model_path=args.model, results=results, store=True, keep_results=False,
                chunk=args.chunk,
            )  # fmt: skip
            round_trip = time.perf_counter() - start
            start = time.perf_counter()
            predict_pacs(
                pacs, out, predictor, model_path=args.model, results=results, store=True, chunk=args.chunk
            )
            rerun = time.perf_counter() - start
        finally:
            server.stop()
    print(f"\nupload of {len(files)} files (REST, one request each): {upload:.1f} s")
    print("| run | seconds | studies/s |\n|---|---|---|")
    print(f"| local folder (`predict_folder`) | {local_s:.1f} | {local.predicted / local_s:.2f} |")
    print(
        f"| local folder + an SR per study (`--dicom-out`) | {local_sr:.1f} | {local.predicted / local_sr:.2f} |"
    )
    print(
        f"| Orthanc round trip: QIDO + WADO ({summary.images} images) + predict + STOW ({summary.stored} SRs) "
        f"| {round_trip:.1f} | {summary.predict.predicted / round_trip:.2f} |"
    )
    print(f"| rerun (everything done: one QIDO per modality, nothing fetched or stored) | {rerun:.1f} | - |")
    print(f"round trip / local with SRs: {round_trip / local_sr:.2f}x the time")


if __name__ == "__main__":
    main()
