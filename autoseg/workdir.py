"""The work directory: every path autoseg writes for one dataset, and beside each the reader and writer of
its artifact. No other module spells a work-directory file name.

```
WORKDIR/
  fingerprint.json                      Workdir.fingerprint_path     read_fingerprint / write_fingerprint
  plans.json                            Workdir.plans_path           read_plans / write_plans
  splits.json                           Workdir.splits_path          read_splits / write_splits
  preprocessed/configurations.json      Workdir.configurations_path  read_/write_configurations
  preprocessed/<folder>/                Workdir.data_dir(configuration), preprocessing_json(folder)
  preprocessed/<folder>/<case>/         CaseFolder: image.npy, labels.npy, foreground.npz, properties.json
  reference_labels/<case>.nii.gz        Workdir.reference_labels_dir  (written by preprocess; 4D for regions)
  reference_labels/annotated.json       read_/write_reference_annotated (partly contoured region datasets)
  trained/<configuration>/fold_<k>/     Workdir.run(configuration, fold) -> RunFolder
  trained/<configuration>/postprocessing.json   Workdir.postprocessing_path(...)   read_postprocessing
  trained/<configuration>/fold_<k>/validation/   RunFolder.validation -> PredictionFolder
  trained/<cascade stage>/previous_stage/<case>.npy   Workdir.previous_stage_path(configuration, case)
  ensembles/<a>+<b>/                    Workdir.ensemble_dir(members), ensemble_cross_validation(members)
  training_reference.json               read_training_reference / write_training_reference
  best_configuration.json, .md          read_best_choice / write_best_configuration
  raw/, heldout/, heldout_dicom/, predictions/, predictions_dicom/, evaluation/   Workdir.demo_dir(name)
  <any folder>/.autoseg.lock            folder_lock(folder, activity): one writer at a time (predict's output
                                        folder, a fold's run folder); removed on release; shared by
                                        predict --shard's shards, each with its own .autoseg.lock-shard-I-of-N
```

The work directory is self-contained after ``preprocess``: the reference label maps that validation and
``find_best_configuration`` score against are copied into ``reference_labels/`` (nnU-Net's
``gt_segmentations``), so the raw dataset may move or go once it is preprocessed.

The artifact dataclasses live with their stage (``Fingerprint`` in :mod:`autoseg.fingerprint`, ``Plans`` in
:mod:`autoseg.plans`, ...); their modules are imported when an artifact is read or written, so importing this
module stays cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autoseg.errors import ConfigurationNotPlannedError, FolderInUseError, WorkdirError
from autoseg.io import read_json, write_json, write_text_atomically

if TYPE_CHECKING:
    from autoseg.fingerprint import Fingerprint
    from autoseg.plans import Plans
    from autoseg.postprocessing.steps import Postprocessing
    from autoseg.report.structures import TrainingReference

CHECKPOINTS = ("final", "best", "latest")
logger = logging.getLogger(__name__)

LOCK_FILE = ".autoseg.lock"
DemoFolder = Literal["raw", "heldout", "heldout_dicom", "predictions", "predictions_dicom", "evaluation"]
Split = dict[str, list[str]]


@dataclass(frozen=True)
class CaseFolder:
    """``preprocessed/<folder>/<case>``: one stored case (read and written by
    :mod:`autoseg.preprocessing.store`)."""

    path: Path

    @property
    def image_path(self) -> Path:
        """(C, Z, Y, X) float32 ``.npy``, opened by memory map."""
        return self.path / "image.npy"

    @property
    def labels_path(self) -> Path:
        """(Z, Y, X) uint8/uint16 ``.npy`` (a region dataset: the (K, Z, Y, X) uint8 region target); absent
        for an unlabelled case."""
        return self.path / "labels.npy"

    @property
    def foreground_path(self) -> Path:
        """class -> (N, 3) int32 voxel locations, ``.npz``."""
        return self.path / "foreground.npz"

    @property
    def properties_path(self) -> Path:
        """What it takes to invert the preprocessing, and the signature of the sources."""
        return self.path / "properties.json"


@dataclass(frozen=True)
class PredictionFolder:
    """A folder of cross-validation predictions (a fold's ``validation/``, an ensemble's
    ``cross_validation/``): per case the label map ``<case>.nii.gz`` (original geometry) and the probabilities
    ``<case>.npz`` (:func:`autoseg.io.write_probabilities`)."""

    path: Path

    def labels_path(self, case: str) -> Path:
        return self.path / f"{case}.nii.gz"

    def probabilities_path(self, case: str) -> Path:
        return self.path / f"{case}.npz"

    def probability_files(self) -> dict[str, Path]:
        """Case -> probabilities file, for the cases that have one."""
        return {p.name.removesuffix(".npz"): p for p in sorted(self.path.glob("*.npz"))}


@dataclass(frozen=True)
class RunFolder:
    """``WORKDIR/trained/<configuration>/fold_<fold>``: one training run and its validation."""

    path: Path

    @property
    def fold(self) -> str:
        return self.path.name.removeprefix("fold_")

    def checkpoint(self, name: str) -> Path:
        """``checkpoint_<name>.pt``, ``name`` one of :data:`CHECKPOINTS`."""
        if name not in CHECKPOINTS:
            raise WorkdirError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got '{name}'")
        return self.path / f"checkpoint_{name}.pt"

    @property
    def log_path(self) -> Path:
        return self.path / "log.jsonl"

    @property
    def text_log_path(self) -> Path:
        return self.path / "training.log"

    @property
    def progress_plot_path(self) -> Path:
        return self.path / "progress.png"

    @property
    def train_config_path(self) -> Path:
        return self.path / "train_config.json"

    @property
    def plans_path(self) -> Path:
        """The copy of ``plans.json`` the run was trained with."""
        return self.path / "plans.json"

    @property
    def validation_dir(self) -> Path:
        """Validation predictions: ``<case>.nii.gz`` + ``<case>.npz``, and ``summary.json``."""
        return self.path / "validation"

    @property
    def validation(self) -> PredictionFolder:
        return PredictionFolder(self.validation_dir)

    @property
    def validation_summary_path(self) -> Path:
        return self.validation_dir / "summary.json"

    def read_validation_summary(self) -> dict[str, Any]:
        data = read_json(self.validation_summary_path)
        if not isinstance(data, dict):
            raise WorkdirError(f"{self.validation_summary_path}: expected a JSON object")
        return data

    def is_validated(self) -> bool:
        return self.validation_summary_path.is_file()


@dataclass(frozen=True)
class Workdir:
    """One dataset's work directory (see the module docstring for the layout)."""

    root: Path

    # ------------------------------------------------------------------ fingerprint and plans
    @property
    def fingerprint_path(self) -> Path:
        return self.root / "fingerprint.json"

    def read_fingerprint(self) -> Fingerprint:
        from autoseg.fingerprint import load_fingerprint

        return load_fingerprint(self.fingerprint_path)

    def write_fingerprint(self, fingerprint: Fingerprint) -> Path:
        write_json(fingerprint.to_json(), self.fingerprint_path)
        return self.fingerprint_path

    @property
    def plans_path(self) -> Path:
        return self.root / "plans.json"

    def has_plans(self) -> bool:
        return self.plans_path.is_file()

    def read_plans(self) -> Plans:
        from autoseg.plans import load_plans

        return load_plans(self.plans_path)

    def write_plans(self, plans: Plans) -> Path:
        from autoseg.plans import save_plans

        save_plans(plans, self.plans_path)
        return self.plans_path

    # ------------------------------------------------------------------ splits
    @property
    def splits_path(self) -> Path:
        return self.root / "splits.json"

    def read_splits(self) -> list[Split] | None:
        """The cross-validation splits, or ``None`` before the first fold is trained."""
        if not self.splits_path.is_file():
            return None
        data = read_json(self.splits_path)
        if not isinstance(data, list) or not all(
            isinstance(s, dict) and {"train", "val"} <= set(s) for s in data
        ):
            raise WorkdirError(f"{self.splits_path}: expected a list of {{'train': [...], 'val': [...]}}")
        return [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]} for s in data]

    def write_splits(self, splits: Sequence[Split]) -> Path:
        write_json(list(splits), self.splits_path)
        return self.splits_path

    # ------------------------------------------------------------------ preprocessed data
    @property
    def preprocessed_dir(self) -> Path:
        return self.root / "preprocessed"

    @property
    def configurations_path(self) -> Path:
        """Configuration -> data folder (identically preprocessed configurations share one)."""
        return self.preprocessed_dir / "configurations.json"

    def read_configurations(self) -> dict[str, str]:
        if not self.configurations_path.is_file():
            return {}
        data = read_json(self.configurations_path)
        if not isinstance(data, dict):
            raise WorkdirError(f"{self.configurations_path}: expected a JSON object")
        return {str(k): str(v) for k, v in data.items()}

    def write_configurations(self, mapping: dict[str, str]) -> Path:
        write_json(dict(sorted(mapping.items())), self.configurations_path)
        return self.configurations_path

    def data_folder(self, folder: str) -> Path:
        """``preprocessed/<folder>``, by folder name (see :meth:`data_dir` for a configuration)."""
        return self.preprocessed_dir / folder

    def preprocessing_json(self, folder: str) -> Path:
        """``preprocessed/<folder>/preprocessing.json``: the parameters the folder's data was made with."""
        return self.data_folder(folder) / "preprocessing.json"

    def data_dir(self, configuration: str) -> Path:
        """The preprocessed data of ``configuration``; :class:`WorkdirError` when it is not preprocessed."""
        folder = self.read_configurations().get(configuration)
        if folder is None or not self.preprocessing_json(folder).is_file():
            raise WorkdirError(
                f"{configuration} is not preprocessed in {self.root}; run 'autoseg preprocess'"
            )
        return self.data_folder(folder)

    @property
    def reference_labels_dir(self) -> Path:
        """The training label maps in their original geometry, ``<case>.nii.gz`` (copied by preprocess)."""
        return self.root / "reference_labels"

    def reference_labels_path(self, case: str) -> Path:
        return self.reference_labels_dir / f"{case}.nii.gz"

    @property
    def reference_annotated_path(self) -> Path:
        """Case -> the structure numbers contoured there, for a partly contoured region dataset."""
        return self.reference_labels_dir / "annotated.json"

    def read_reference_annotated(self) -> dict[str, tuple[int, ...]]:
        """Case -> structure numbers contoured in its reference (``docs/dicom.md``, "Partly contoured
        cases"); a case not listed (or no file) has every structure."""
        path = self.reference_annotated_path
        if not path.is_file():
            return {}
        data = read_json(path)
        if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(n, int) for n in v) for v in data.values()
        ):
            raise WorkdirError(f"{path}: expected case -> structure numbers; run 'autoseg preprocess'")
        return {str(case): tuple(values) for case, values in data.items()}

    def write_reference_annotated(self, annotated: dict[str, tuple[int, ...]]) -> None:
        """Write :meth:`read_reference_annotated`'s file, or remove it when every case has every structure."""
        path = self.reference_annotated_path
        if not annotated:
            path.unlink(missing_ok=True)
            return
        write_json({case: list(values) for case, values in sorted(annotated.items())}, path)

    # ------------------------------------------------------------------ training runs
    @property
    def trained_dir(self) -> Path:
        return self.root / "trained"

    def configuration_dir(self, configuration: str) -> Path:
        return self.trained_dir / configuration

    def run(self, configuration: str, fold: str | int) -> RunFolder:
        return RunFolder(self.configuration_dir(configuration) / f"fold_{fold}")

    def previous_stage_path(self, configuration: str, case: str) -> Path:
        """``trained/<configuration>/previous_stage/<case>.npy``: a cascade stage's input from its previous
        stage, that stage's cross-validation prediction of ``case`` on this stage's preprocessed grid
        (``(Z, Y, X)`` label map or ``(K, Z, Y, X)`` region target; written by ``train``)."""
        return self.configuration_dir(configuration) / "previous_stage" / f"{case}.npy"

    def runs(self, configuration: str) -> list[RunFolder]:
        """Every run folder of ``configuration``, by fold name."""
        return [
            RunFolder(p) for p in sorted(self.configuration_dir(configuration).glob("fold_*")) if p.is_dir()
        ]

    def trained_configurations(self) -> list[str]:
        """Configurations with at least one fold holding a final checkpoint."""
        if not self.trained_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.trained_dir.iterdir()
            if any(r.checkpoint("final").is_file() for r in self.runs(p.name))
        )

    # ------------------------------------------------------------------ post-processing and ensembles
    def ensemble_dir(self, members: Sequence[str]) -> Path:
        """``ensembles/<a>+<b>``, members sorted."""
        return self.root / "ensembles" / "+".join(sorted(members))

    def ensemble_cross_validation(self, members: Sequence[str]) -> PredictionFolder:
        """``ensembles/<a>+<b>/cross_validation``: the ensemble's averaged validation predictions."""
        return PredictionFolder(self.ensemble_dir(members) / "cross_validation")

    def postprocessing_path(self, members: Sequence[str]) -> Path:
        """The post-processing chosen for one configuration or an ensemble of several."""
        if len(members) == 1:
            return self.configuration_dir(members[0]) / "postprocessing.json"
        return self.ensemble_dir(members) / "postprocessing.json"

    def read_postprocessing(self, members: Sequence[str]) -> Postprocessing | None:
        from autoseg.postprocessing.steps import load_postprocessing

        path = self.postprocessing_path(members)
        return load_postprocessing(path) if path.is_file() else None

    # ------------------------------------------------------------------ find_best_configuration
    @property
    def training_reference_path(self) -> Path:
        return self.root / "training_reference.json"

    def read_training_reference(self) -> TrainingReference | None:
        """``training_reference.json`` (volumes and cross-validation confidences), else the volumes from the
        fingerprint, else ``None``."""
        from autoseg.report.structures import TrainingReference

        path = self.training_reference_path
        if path.is_file():
            data = read_json(path)
            try:
                if not isinstance(data, dict):
                    raise TypeError("expected a JSON object")
                return TrainingReference.from_json(data)
            except (KeyError, TypeError, ValueError) as error:
                raise WorkdirError(f"{path}: not a valid training reference ({error})") from None
        if self.fingerprint_path.is_file():
            return TrainingReference.from_fingerprint(self.read_fingerprint())
        return None

    def write_training_reference(self, reference: TrainingReference) -> Path:
        write_json(reference.to_json(), self.training_reference_path)
        return self.training_reference_path

    @property
    def best_configuration_path(self) -> Path:
        return self.root / "best_configuration.json"

    @property
    def best_configuration_table_path(self) -> Path:
        return self.root / "best_configuration.md"

    def read_best_choice(self) -> list[str] | None:
        """The configuration(s) ``find_best_configuration`` chose, if it ran here."""
        if not self.best_configuration_path.is_file():
            return None
        data = read_json(self.best_configuration_path)
        if not isinstance(data, dict):
            raise WorkdirError(f"{self.best_configuration_path}: expected a JSON object")
        chosen = data.get("ensemble") or ([data["configuration"]] if data.get("configuration") else None)
        return [str(c) for c in chosen] if chosen else None

    def write_best_configuration(self, data: dict[str, Any], table: str) -> Path:
        write_json(data, self.best_configuration_path)
        write_text_atomically(table, self.best_configuration_table_path)
        return self.best_configuration_path

    # ------------------------------------------------------------------ the demo's folders
    def demo_dir(self, name: DemoFolder) -> Path:
        """A folder only ``autoseg demo`` makes: its synthetic dataset (``raw``), the held-out cases
        (``heldout``, and as a DICOM series ``heldout_dicom``), their predictions and their evaluation."""
        return self.root / name

    # ------------------------------------------------------------------ the default configuration
    def default_configuration(self, planned: Sequence[str]) -> str:
        """The configuration a command uses when none is given: ``find_best_configuration``'s single choice,
        else ``3d_fullres`` if trained (or nothing is trained yet and it is planned), else the only trained
        one, else the only planned one (``2d`` for 2D data).

        Raises:
            WorkdirError: several configurations are trained and none was chosen.
            ConfigurationNotPlannedError: nothing is trained, ``3d_fullres`` is not planned and several
                others are (a renamed configuration is never replaced by another silently).
        """
        chosen = self.read_best_choice()
        if chosen is not None and len(chosen) == 1:
            return chosen[0]
        trained = self.trained_configurations()
        if not trained:
            if "3d_fullres" in planned or len(planned) != 1:
                return _planned_or_refuse("3d_fullres", planned, self.plans_path)
            return planned[0]
        if "3d_fullres" in trained:
            return "3d_fullres"
        if len(trained) == 1:
            return trained[0]
        raise WorkdirError(
            f"{self.root}: several configurations are trained ({', '.join(trained)}); choose one with -c"
        )


# ---------------------------------------------------------------------- one writer per folder
@contextlib.contextmanager
def folder_lock(
    folder: Path,
    activity: str,
    *,
    shared: bool = False,
    name: str = LOCK_FILE,
    remove_temporaries: bool = False,
) -> Iterator[None]:
    """Hold ``folder``'s lock (``folder/.autoseg.lock``, made with the folder if needed) while the block runs.

    ``fcntl.flock``: the kernel releases it when the holder exits in any way, ``kill -9`` included, so a lock
    is never stale; a left-over lock file (after ``kill -9``) is simply taken over. The file holds the
    holder's pid and ``activity`` and is removed on release.

    ``shared``: several holders at once (the shards of ``predict --shard``, each also holding its own
    ``name``), none beside an exclusive holder (a plain ``predict``); the last shared holder to leave
    removes the file. ``name``: another lock file in ``folder`` (a shard's own). ``remove_temporaries``
    (an exclusive holder only): once the lock is held, delete the temporaries a killed run left in the
    folder's tree (:func:`remove_stale_temporaries`); no other autoseg process can be writing there then.

    Raises:
        FolderInUseError: another process holds the lock (the message names the folder and its pid).
        WorkdirError: the folder or its lock file cannot be made (a file in the way, no permission).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WorkdirError(f"{folder}: cannot make the folder ({error.strerror or error})") from None
    path = folder / name
    descriptor = _take_lock(path, folder, shared=shared)
    try:
        if not shared:
            os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()}: {activity}\n".encode(), 0)
        if remove_temporaries and not shared:
            remove_stale_temporaries(folder)
        yield
    finally:
        if not shared or _is_last_holder(descriptor):
            path.unlink(missing_ok=True)  # before the unlock: a waiter that opened this file retries anew
        os.close(descriptor)


TEMPORARY_NAME = re.compile(
    r"\.(?:.+\.[a-z0-9_]{8}\.tmp|autoseg-partial-[a-z0-9_]{8}|.+\.(?:partial|stale)-[a-z0-9_]{8})"
)
"""The hidden folders of :mod:`autoseg.io`'s atomic writers (``tempfile.mkdtemp``'s 8 random characters):
``.<name>.<random>.tmp`` (``atomic_target``), ``.autoseg-partial-<random>`` (``atomic_files``),
``.<name>.partial-<random>`` and ``.<name>.stale-<random>`` (``atomic_folder``)."""


def remove_stale_temporaries(folder: Path, *, depth: int = 2) -> list[Path]:
    """Delete the temporaries that runs killed with ``kill -9`` left in ``folder`` and its plain subfolders
    down to ``depth`` levels (autoseg writes at most two deep: ``labelsTr/``, ``validation/``): only folders
    whose names match :data:`TEMPORARY_NAME` (nothing else hidden, no file, no symbolic link). Call it only
    while holding ``folder``'s lock (:func:`folder_lock` with ``remove_temporaries``): a live writer's
    temporary must not go.

    Returns:
        The folders removed (each logged).
    """
    removed: list[Path] = []
    if not folder.is_dir() or folder.is_symlink():
        return removed
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_dir():
            continue
        if TEMPORARY_NAME.fullmatch(entry.name):
            logger.info("removing %s, left by an interrupted run", entry)
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        elif depth > 0 and not entry.name.startswith("."):
            removed += remove_stale_temporaries(entry, depth=depth - 1)
    return removed


def _is_last_holder(descriptor: int) -> bool:
    """Whether the shared lock on ``descriptor`` can become exclusive now (no other holder is left)."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _take_lock(path: Path, folder: Path, *, shared: bool = False) -> int:
    """An open descriptor of ``path`` holding its exclusive (or ``shared``) lock (the file still at
    ``path``)."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    tries = 5  # the last shared holder holds it exclusively for a moment while it removes the file
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise WorkdirError(f"{folder}: cannot make the lock file ({error.strerror or error})") from None
        try:
            fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "pid unknown"
            os.close(descriptor)
            tries -= 1
            if tries > 0:
                time.sleep(0.02)
                continue
            raise FolderInUseError(
                f"{folder} is in use by another autoseg process ({holder}); wait for it to end or stop it"
            ) from None
        try:
            current = path.stat().st_ino
        except FileNotFoundError:
            current = -1
        if current == os.fstat(descriptor).st_ino:
            return descriptor
        os.close(descriptor)  # the previous holder removed the file between our open and our lock: again


def _planned_or_refuse(name: str, planned: Sequence[str], plans_path: Path) -> str:
    """``name`` when ``planned`` has it (or nothing is known yet: the plans' reader reports that)."""
    if name in planned or not planned:
        return name
    raise ConfigurationNotPlannedError(
        f"{plans_path}: no configuration given and the default '{name}' is not planned; planned: "
        f"{', '.join(planned)}; choose one with -c"
    )
