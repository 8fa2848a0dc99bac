"""Long jobs the app starts and watches: `twoview train` as a detached process, batch prediction in a thread.

A training job is a `twoview train` process in its own session, so it outlives the browser tab
(and the app); a small JSON record in a jobs folder (pid, run folder, command) lets a reload find it
again. A batch job scans a folder and runs `predict_folder` in a thread of the app's process, which
keeps a list of them, so a reload finds it the same way (`latest_batch`); its files are read in a
killable child process (`pipeline.isolate`), so Stop ends it at once, and its output is claimed at
Start: one job per output file, and only a file of ours is shown.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from models.atomic import write_atomic
from pipeline.deidentify import Deidentifier
from pipeline.errors import TwoviewError
from pipeline.isolate import Cancelled, Isolated
from pipeline.outputs import ErrorsFile, PredictionsFile, errors_path, output_format
from pipeline.predict import Predictor, PredictSummary, predict_folder
from pipeline.settings import TrainSettings
from pipeline.studies import ScanResult, scan_folder

__all__ = [
    "BatchJob",
    "JobError",
    "TrainJob",
    "command_text",
    "latest_batch",
    "latest_job",
    "list_jobs",
    "train_command",
]

logger = logging.getLogger(__name__)

_POPEN: dict[int, subprocess.Popen] = {}  # children started by this process, so their exit can be read
_OUTPUTS: set[Path] = set()  # outputs of the batch jobs running in this process
_OUTPUTS_LOCK = threading.Lock()
_BATCHES: list[BatchJob] = []  # every batch job this process started, oldest first
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # terminal escapes a progress bar leaves in a log
_BAR = re.compile(
    r"[^|]*\|[^|]*\|\s*[\d?]+/[\d?]+ \[[^\]]*\]"
)  # "Epoch 0:  50%|███  | 1/2 [00:01<00:01, ...]"
_EPOCH_PROGRESS = re.compile(r"Epoch (\d+):\s+(\d+)%\|[^|]*\|\s*(\d+)/(\d+)")


class JobError(TwoviewError):
    """A job that cannot be started, found or stopped."""


def train_command(settings: TrainSettings) -> list[str]:
    """The `twoview train` command line for `settings` (options at their defaults left out)."""
    return [sys.executable, "-m", "pipeline.cli", "train", *settings.to_args()]


@dataclass
class TrainJob:
    """One `twoview train` process: its pid, run folder and command, saved as `<jobs>/<name>.json`."""

    name: str
    run_dir: str
    pid: int
    command: list[str]
    started: float
    stopped: bool = False
    record: str = ""  # where this record is saved

    @classmethod
    def start(cls, settings: TrainSettings, runs_dir: str | Path, jobs_dir: str | Path) -> TrainJob:
        """Start training into a new run folder under `runs_dir`, detached from the caller's session.

        `settings.out_dir` is replaced by that new folder.
        """
        name = time.strftime("run-%Y%m%d-%H%M%S")
        run_dir = _unique_dir(Path(runs_dir) / name)
        command = train_command(replace(settings, out_dir=str(run_dir)))
        log = (run_dir / "train.log").open("ab")
        try:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as err:
            raise JobError(f"cannot start training: {err.strerror or err}") from err
        finally:
            log.close()
        _POPEN[process.pid] = process
        job = cls(run_dir.name, str(run_dir), process.pid, command, time.time())
        job.record = str(Path(jobs_dir) / f"{run_dir.name}.json")
        job.save()
        logger.info("training started: pid %d, run folder %s", process.pid, run_dir)
        return job

    @classmethod
    def load(cls, path: str | Path) -> TrainJob:
        try:
            data = json.loads(Path(path).read_text())
            return cls(**{**data, "record": str(path)})
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise JobError(f"{path}: not a readable job record ({err})") from err

    def save(self) -> None:
        write_atomic(
            self.record, json.dumps({k: v for k, v in asdict(self).items() if k != "record"}, indent=2)
        )

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    @property
    def running(self) -> bool:
        """True while the training process is alive (a zombie or an unrelated reused pid is not)."""
        process = _POPEN.get(self.pid)
        if process is not None:
            return process.poll() is None
        return _alive(self.pid, self.run_dir)

    @property
    def state(self) -> str:
        """ "running", "finished" (report written), "stopped" (by the user) or "failed"."""
        if self.running:
            return "running"
        if (self.run_path / "report.md").is_file():
            return "finished"
        return "stopped" if self.stopped else "failed"

    def stop(self) -> None:
        """Terminate the training process group (SIGTERM); the run folder keeps what was written."""
        self.stopped = True
        self.save()
        if not self.running:
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        except PermissionError as err:
            raise JobError(f"cannot stop training process {self.pid}: {err.strerror}") from err
        process = _POPEN.get(self.pid)
        if process is not None:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                process.wait()
        logger.info("training stopped: pid %d, run folder %s", self.pid, self.run_dir)

    def report(self) -> str | None:
        """The run's `report.md`, once training has finished."""
        path = self.run_path / "report.md"
        return path.read_text(encoding="utf-8") if path.is_file() else None

    @property
    def best(self) -> Path:
        return self.run_path / "best.safetensors"

    def _log_end(self) -> str:
        path = self.run_path / "train.log"
        if not path.is_file():
            return ""
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            return f.read().decode("utf-8", "replace")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the training log with the progress bars taken out (they show as `progress`)."""
        kept = []
        for line in _ESCAPES.sub("", self._log_end()).split("\n"):
            for part in line.split("\r"):
                text = _BAR.sub("", part).strip()
                if text and not text.endswith(":"):
                    kept.append(text)
        return "\n".join(kept[-lines:])

    def progress(self) -> tuple[int, int, int] | None:
        """(epoch counted from 1, batches done, batches in the epoch) from the log's last progress bar."""
        found = _EPOCH_PROGRESS.findall(self._log_end())
        if not found:
            return None
        epoch, _, done, total = found[-1]
        return int(epoch) + 1, int(done), int(total)


def latest_batch(batch_dir: str | Path) -> BatchJob | None:
    """The running batch job writing into `batch_dir`, else the newest one there: a reload reattaches."""
    folder = Path(batch_dir).resolve()
    jobs = [job for job in reversed(_BATCHES) if job.output.is_relative_to(folder)]
    return next((j for j in jobs if j.running), jobs[0] if jobs else None)


def list_jobs(jobs_dir: str | Path) -> list[TrainJob]:
    """Every readable job record, newest first."""
    jobs = []
    for path in Path(jobs_dir).glob("*.json"):
        try:
            jobs.append(TrainJob.load(path))
        except JobError as err:
            logger.warning("%s", err)
    return sorted(jobs, key=lambda j: j.started, reverse=True)


def latest_job(jobs_dir: str | Path) -> TrainJob | None:
    """The running job if there is one, else the newest."""
    jobs = list_jobs(jobs_dir)
    return next((j for j in jobs if j.running), jobs[0] if jobs else None)


def _alive(pid: int, run_dir: str) -> bool:
    """A process not started by us: alive, not a zombie, and its command line names the run folder."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().decode("utf-8", "replace")
    except (OSError, IndexError):
        return False
    return state != "Z" and run_dir in cmdline


def _unique_dir(path: Path) -> Path:
    candidate, n = path, 0
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            n += 1
            candidate = path.with_name(f"{path.name}-{n}")


@dataclass
class BatchJob:
    """Scan a folder and predict it into `output` in a background thread; poll `phase` and the counters.

    `accepted` turns true once the output (and its errors file) proved to be ours at `start`: only
    then may a page show or serve them.
    """

    folder: Path
    output: Path
    predictor: Predictor
    phase: str = "starting"  # starting, scanning, predicting, done, failed, cancelled
    files_done: int = 0
    files_total: int = 0
    studies: int = 0
    error: str | None = None
    summary: PredictSummary | None = None
    started: float = field(default_factory=time.time)
    predicting_since: float | None = None
    done_before: int = 0  # studies already in the output when this job started (a resumed run)
    accepted: bool = False
    deidentify: Deidentifier | None = field(default=None, repr=False)  # pseudonyms in the outputs
    reader: Isolated = field(default_factory=Isolated, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.folder, self.output = Path(self.folder), Path(self.output)
        output_format(self.output)
        try:
            is_folder = stat.S_ISDIR(self.folder.stat().st_mode)
        except OSError:
            is_folder = False
        if not is_folder:
            raise JobError(f"{self.folder}: no such folder")

    @property
    def errors_output(self) -> Path:
        return errors_path(self.output)

    @property
    def running(self) -> bool:
        return self.phase in ("starting", "scanning", "predicting")

    def start(self) -> BatchJob:
        """Claim the output (refused if another job writes it, or if it is not a file of ours), then run."""
        with _OUTPUTS_LOCK:
            if self.output in _OUTPUTS:
                raise JobError(
                    f"{self.output} is being written by another Batch job; wait until it has finished "
                    "(running it again then resumes it) or choose another output file"
                )
            _OUTPUTS.add(self.output)
        try:
            with (
                PredictionsFile(self.output, self.predictor.labels, self.predictor.thresholds) as out,
                ErrorsFile(self.errors_output),
            ):
                self.accepted = True
                self.done_before = len(out.done)
            self._thread = threading.Thread(target=self._run, name=f"batch {self.folder}", daemon=True)
            self._thread.start()
        except BaseException:
            self._release()
            raise
        _BATCHES.append(self)
        return self

    def cancel(self) -> None:
        """Stop the job: the file being read is abandoned at once; rows already written stay."""
        self.reader.cancel()

    def seconds_left(self, rows: int) -> float | None:
        """An estimate of the time left in this phase, from the pace so far (None before there is one)."""
        now = time.time()
        if self.phase in ("starting", "scanning") and self.files_done and self.files_total:
            return (self.files_total - self.files_done) * (now - self.started) / self.files_done
        done = rows - self.done_before
        if self.phase == "predicting" and self.predicting_since and done > 0:
            return max(self.studies - rows, 0) * (now - self.predicting_since) / done
        return None

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self.phase = "scanning"
            scan = scan_folder(self.folder, progress=self._scanned, runner=self.reader)
            self.studies = len(scan.studies)
            self.predicting_since = time.time()
            self.phase = "predicting"
            self.summary = self._predict(scan)
            self.phase = "done"
        except Cancelled:
            self.phase = "cancelled"
        except TwoviewError as err:
            self.error, self.phase = str(err), "failed"
        except Exception as err:  # the thread must always end in a state the page can show
            logger.exception("batch prediction of %s failed", self.folder)
            self.error, self.phase = f"unexpected {type(err).__name__}: {err}", "failed"
        finally:
            self.reader.close()
            self._release()

    def _release(self) -> None:
        with _OUTPUTS_LOCK:
            _OUTPUTS.discard(self.output)

    def _scanned(self, done: int, total: int, path: Path) -> None:
        self.files_done, self.files_total = done, total
        if self.reader.cancelled:
            raise Cancelled

    def _predict(self, scan: ScanResult) -> PredictSummary:
        if self.deidentify is not None:
            self.deidentify = self.deidentify.under(self.folder)
        return predict_folder(
            scan,
            self.output,
            predictor=self.predictor,
            workers=0,
            runner=self.reader,
            deidentify=self.deidentify,
        )


def command_text(command: Sequence[str]) -> str:
    """A command line for display, with `python -m pipeline.cli` shown as `twoview`."""
    words = list(command)
    if words[1:3] == ["-m", "pipeline.cli"]:
        words = ["twoview", *words[3:]]
    return " ".join(words)
