"""What DICOM writers share: source headers to reference, Patient/Study attributes to copy, the character set,
the equipment and approval attributes, atomic saves."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid

from autoseg.dicom.series import DicomSeries, read_header
from autoseg.errors import DicomError
from autoseg.io import atomic_target
from autoseg.types import LabelVolume

logger = logging.getLogger(__name__)

_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
_DEFAULT_REPERTOIRE = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})

PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
"""Patient and General Study attributes every derived object carries (type 1 or 2: present, maybe empty)."""

OPTIONAL_PATIENT_STUDY_KEYWORDS = (
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthTime",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
)
"""Patient, General Study and Patient Study attributes (type 3) copied only when the source has a value."""


def copy_patient_and_study(source: Dataset, target: Dataset) -> None:
    """Copy the Patient and Study attributes of ``source`` into ``target``.

    The type 1/2 ones (:data:`PATIENT_STUDY_KEYWORDS`) are always set (empty when the source has none); the
    optional ones (:data:`OPTIONAL_PATIENT_STUDY_KEYWORDS`, IssuerOfPatientID, OtherPatientIDsSequence...) are
    copied only when the source has a value, so the target never gains empty type 3 attributes.
    """
    for keyword in PATIENT_STUDY_KEYWORDS:
        setattr(target, keyword, copy.deepcopy(source.get(keyword, "") or ""))
    for keyword in OPTIONAL_PATIENT_STUDY_KEYWORDS:
        value = source.get(keyword)
        if value is not None and str(value) != "" and not (isinstance(value, list) and not value):
            setattr(target, keyword, copy.deepcopy(value))


def source_character_set(source: Dataset) -> list[str]:
    """The source's SpecificCharacterSet as a list of values; ``[]`` when absent or empty (the default)."""
    value = source.get("SpecificCharacterSet")
    if not value:
        return []
    values = [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]
    return values if any(values) else []


def choose_character_set(source_values: Sequence[str], texts: Iterable[str]) -> list[str]:
    """The SpecificCharacterSet values of a derived object holding ``texts``.

    The source's character set is kept when every text can be encoded in it; otherwise (or when the source has
    none and a text is not ASCII) the result is ``["ISO_IR 192"]`` (UTF-8). ``[]``: no character set needed.
    ISO 2022 code extensions (e.g. ``\\ISO 2022 IR 87``, Japanese) count each character as encodable when it
    is ASCII or one of the extensions encodes it.
    """
    texts = [t for t in texts if not t.isascii()]
    if not texts:
        return list(source_values)
    if source_values and all(_encodable(t, source_values) for t in texts):
        return list(source_values)
    return ["ISO_IR 192"]


def apply_character_set(dataset: Dataset, source: Dataset) -> None:
    """Set ``dataset``'s SpecificCharacterSet for the text it holds (see :func:`choose_character_set`).

    Call it last, once every text attribute is set: pydicom encodes the text with it when saving.
    """
    source_values = source_character_set(source)
    chosen = choose_character_set(source_values, _texts(dataset))
    if chosen != source_values:
        logger.info("text needs %s; the source has %s", chosen, source_values or "the default repertoire")
    if chosen:
        dataset.SpecificCharacterSet = chosen[0] if len(chosen) == 1 else chosen
    elif "SpecificCharacterSet" in dataset:
        del dataset.SpecificCharacterSet


def highdicom_character_set(values: Sequence[str]) -> str | list[str] | None:
    """``values`` in the form highdicom accepts: an empty first value of an ISO 2022 set spelled out as
    ``ISO 2022 IR 6``, and a lone code extension (``ISO 2022 IR 87``) preceded by it."""
    if not values:
        return None
    spelled = [v or "ISO 2022 IR 6" for v in values]
    if len(spelled) == 1 and spelled[0].startswith("ISO 2022") and spelled[0] != "ISO 2022 IR 6":
        spelled.insert(0, "ISO 2022 IR 6")
    return spelled[0] if len(spelled) == 1 else spelled


def _encodable(text: str, values: Sequence[str]) -> bool:
    codecs = [python_encoding.get(v) for v in values if v not in _DEFAULT_REPERTOIRE]
    if len(values) == 1 and codecs and codecs[0] is not None:
        return _encodes(text, codecs[0])
    return all(c.isascii() or any(e is not None and _encodes(c, e) for e in codecs) for c in text)


def _encodes(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except (UnicodeError, LookupError):
        return False
    return True


def _texts(dataset: Dataset) -> Iterator[str]:
    for element in dataset.iterall():
        if element.VR in _TEXT_VRS and element.value is not None:
            values = element.value if isinstance(element.value, MultiValue) else [element.value]
            yield from (str(v) for v in values)


def series_shape(series: DicomSeries) -> tuple[int, int, int]:
    """The series grid ``(Z, Y, X)``: slices, rows, columns."""
    first = series.instances[0]
    return (len(series.instances), first.rows, first.columns)


def check_label_grid(labels: LabelVolume, series: DicomSeries) -> None:
    """Refuse a label map that is not on the series grid.

    Raises:
        DicomError: naming both shapes.
    """
    if labels.shape != series_shape(series):
        raise DicomError(
            f"label map shape {labels.shape} does not match the series grid (Z, Y, X) = "
            f"{series_shape(series)} of {series.summary()}"
        )


def save_atomically(dataset: Dataset, path: Path) -> None:
    """Write ``dataset`` as a DICOM file (with preamble and file meta) through a temporary file and a rename.

    Raises:
        DicomError: the file system refused the write.
    """
    try:
        with atomic_target(path) as temporary:
            dataset.save_as(temporary, enforce_file_format=True)
    except OSError as error:
        raise DicomError(f"{path}: cannot write ({error})") from None


def read_source_headers(series: DicomSeries) -> list[Dataset]:
    """Headers (no pixels) of the series' files in slice order, for writers that reference the source.

    Missing Patient/Study attributes are added empty. Empty SOPInstanceUID/SOPClassUID (anonymised data)
    are filled from the file meta information. Empty StudyInstanceUID, SeriesInstanceUID or
    FrameOfReferenceUID are replaced by UIDs derived from the instance UIDs (the same on every call) and a
    warning is logged: the output then references UIDs that the source files do not carry.
    """
    filled = _filled_uids(series)
    headers: list[Dataset] = []
    for instance in series.instances:
        header = read_header(instance.path)
        if header is None:
            raise DicomError(f"{instance.path}: is no longer a readable DICOM file")
        header.SOPInstanceUID = instance.sop_instance_uid
        header.SOPClassUID = series.sop_class_uid
        for keyword, value in filled.items():
            setattr(header, keyword, value)
        for keyword in PATIENT_STUDY_KEYWORDS:  # type 2 in derived objects: present, possibly empty
            if keyword not in header:
                setattr(header, keyword, "")
        if "SpecificCharacterSet" in header and not header.SpecificCharacterSet:
            del header.SpecificCharacterSet  # empty means the default repertoire; highdicom refuses ''
        headers.append(header)
    return headers


def _filled_uids(series: DicomSeries) -> dict[str, str]:
    present = {
        "StudyInstanceUID": series.study_instance_uid,
        "SeriesInstanceUID": series.series_instance_uid,
        "FrameOfReferenceUID": series.frame_of_reference_uid,
    }
    filled: dict[str, str] = {}
    for keyword, value in present.items():
        if not value:
            filled[keyword] = str(generate_uid(entropy_srcs=[keyword, *series.sop_instance_uids]))
            logger.warning("%s: empty %s, referenced as %s", series.summary(), keyword, filled[keyword])
    return filled
