"""``autoseg serve`` with real DICOM software on loopback: dcmtk's ``storescu`` sends real series and its
``storescp`` receives the RTSTRUCT; Orthanc pushes a study through its REST API and gets the RTSTRUCT back
into the same study. Plus kill -9/restart and a load test, both with the node in a child process.

Every server binds free loopback ports, is bounded in time and is stopped in a ``finally``. Tests skip with
the reason when dcmtk, Orthanc or the real data are absent (``.ci/run`` installs the tools).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from test_serve import node_config, serve_model, wait_for

from autoseg.serve.config import Destination, Route
from autoseg.serve.node import ServeNode

__all__ = ["serve_model"]  # the session fixture, shared with tests/test_serve.py

JPEG2000_CT = Path("totalsegmentator_examples/dicom_ct/series")
LUNG_CT = Path("lung_ct_rtstruct/pat_1")


def dcmtk(name: str) -> str:
    """The dcmtk tool ``name`` (not pynetdicom's app of the same name), or skip."""
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and Path(candidate).is_file():
            version = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10)
            if "dcmtk" in (version.stdout + version.stderr).lower():
                return candidate
    pytest.skip(f"dcmtk's {name} is not installed (apt-get install dcmtk)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after {timeout_s:.0f} s")


@contextlib.contextmanager
def background(argv: Sequence[str], log: Path, **options: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, always stopped (SIGTERM, then SIGKILL) when the block ends."""
    with log.open("ab") as stream:
        process = subprocess.Popen(list(argv), stdout=stream, stderr=subprocess.STDOUT, **options)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@contextlib.contextmanager
def storescp(folder: Path) -> Iterator[int]:
    """dcmtk's storescp as DEST on a free port, writing what it receives into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [dcmtk("storescp"), "-aet", "DEST", "-od", str(folder), "+uf", "-fe", ".dcm", str(port)]
    with background(argv, folder.parent / "storescp.log") as process:
        wait_for_port(port, process)
        yield port


def storescu(port: int, files: Sequence[Path], calling: str = "SCANNER") -> None:
    """dcmtk's storescu: send ``files`` in one association, proposing JPEG 2000 lossless for compressed
    files (storescu cannot decompress them) and the default uncompressed syntaxes otherwise."""
    compressed = dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
    syntax = ["-xv"] if compressed else []
    argv = [
        dcmtk("storescu"),
        "-aet",
        calling,
        "-aec",
        "AUTOSEG",
        *syntax,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def real_series(data_root: Path, relative: Path, scratch: Path) -> list[Path]:
    """The image files of a real series. The JPEG 2000 CT is anonymised down to empty SOP Class, SOP
    Instance, Study and Series Instance UIDs (the file meta keeps the first two), which no scanner sends
    and storescu refuses: such files are copied with them filled in (the others derived from the path)."""
    folder = data_root / relative
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("DCM_RS"))
    fixed = []
    for path in paths:
        dataset = dcmread(path)
        if dataset.get("SOPClassUID"):
            fixed.append(path)
            continue
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if not dataset.get(keyword):
                setattr(dataset, keyword, generate_uid(entropy_srcs=[str(relative), keyword]))
        scratch.mkdir(parents=True, exist_ok=True)
        dataset.save_as(scratch / path.name, enforce_file_format=True)
        fixed.append(scratch / path.name)
    return fixed


def received(folder: Path, modality: str) -> list[Path]:
    found = []
    for path in sorted(folder.glob("*.dcm")):
        with contextlib.suppress(Exception):
            if dcmread(path, stop_before_pixels=True).Modality == modality:
                found.append(path)
    return found


def assert_references(rtstruct: Path, series: Sequence[Path]) -> None:
    """The RTSTRUCT references the series it was made on, instance by instance."""
    dataset, source = dcmread(rtstruct), dcmread(series[0], stop_before_pixels=True)
    assert dataset.StudyInstanceUID == source.StudyInstanceUID
    assert dataset.FrameOfReferenceUID == source.FrameOfReferenceUID
    study = dataset.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    referenced = study.RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    cited = {item.ReferencedSOPInstanceUID for item in referenced.ContourImageSequence}
    assert cited == {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in series}


# ---------------------------------------------------------------------------------------------- dcmtk


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize(
    ("relative", "repeats"), [(JPEG2000_CT, 5), (LUNG_CT, 1)], ids=["jpeg2000_ct", "lung_ct"]
)
def test_storescu_sends_a_real_ct_and_storescp_receives_the_rtstruct(
    serve_model: Path, data_root: Path, tmp_path: Path, relative: Path, repeats: int
) -> None:
    series = real_series(data_root, relative, tmp_path / "series")
    out = tmp_path / "storescp"
    latencies = []
    with storescp(out) as port:
        config = node_config(tmp_path / "spool", serve_model, port)
        with ServeNode(config) as node:
            for attempt in range(1, repeats + 1):
                storescu(node.port, series)
                sent = time.monotonic()
                wait_for(lambda n=attempt: len(received(out, "RTSTRUCT")) == n, 180, "the RTSTRUCT")  # type: ignore[misc]
                latencies.append(time.monotonic() - sent)
    rtstructs = received(out, "RTSTRUCT")
    assert_references(rtstructs[0], series)
    assert len({str(dcmread(p).SOPInstanceUID) for p in rtstructs}) == 1  # every re-send recognisable
    print(f"{relative}: last instance -> RTSTRUCT at storescp, s: {[round(s, 2) for s in latencies]}, "
          f"median {statistics.median(latencies):.2f}")  # fmt: skip


# ---------------------------------------------------------------------------------------------- Orthanc


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)
    if found is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    return found


class Orthanc:
    """Orthanc's REST API on loopback (urllib, bounded timeouts)."""

    def __init__(self, http_port: int) -> None:
        self.base = f"http://127.0.0.1:{http_port}"

    def call(self, method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")


@contextlib.contextmanager
def orthanc(folder: Path, node_port: int) -> Iterator[tuple[Orthanc, int]]:
    """Orthanc with a generated configuration: free HTTP and DICOM ports, storage in ``folder``, the
    autoseg node as modality ``autoseg``. Yields the API and Orthanc's DICOM port."""
    binary = orthanc_binary()
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "autoseg-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomModalities": {"autoseg": ["AUTOSEG", "127.0.0.1", node_port]},
        "DicomScuTimeout": 60,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    with background([binary, str(folder / "orthanc.json")], folder / "orthanc.log") as process:
        api = Orthanc(http_port)
        deadline = time.monotonic() + 60
        while True:
            try:
                api.call("GET", "/system")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((folder / "orthanc.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        yield api, dicom_port


@pytest.mark.realdata
@pytest.mark.slow
def test_orthanc_pushes_a_study_and_gets_the_rtstruct_back_into_it(
    serve_model: Path, data_root: Path, tmp_path: Path
) -> None:
    series = real_series(data_root, LUNG_CT, tmp_path / "series")
    node_port = free_port()
    with orthanc(tmp_path / "orthanc", node_port) as (api, dicom_port):
        config = node_config(
            tmp_path / "spool",
            serve_model,
            dicom_port,
            port=node_port,
            allowed_calling_aes=("ORTHANC",),
            destinations={"PACS": Destination("PACS", "ORTHANC", "127.0.0.1", dicom_port)},
            routes=(Route("ct", serve_model, ("PACS",), modality=("CT",)),),
        )
        for path in series:
            api.call("POST", "/instances", path.read_bytes())
        (study,) = api.call("GET", "/studies")
        with ServeNode(config):
            body = json.dumps({"Resources": [study], "Synchronous": True}).encode()
            api.call("POST", "/modalities/autoseg/store", body)
            wait_for(lambda: len(_modalities(api, study)) == 2, 180, "the RTSTRUCT in Orthanc's study")
        assert sorted(_modalities(api, study)) == ["CT", "RTSTRUCT"]
        rtstruct_series = next(s for s in api.call("GET", f"/studies/{study}/series")
                               if s["MainDicomTags"]["Modality"] == "RTSTRUCT")  # fmt: skip
        (instance,) = rtstruct_series["Instances"]
        file = tmp_path / "from_orthanc.dcm"
        request = urllib.request.Request(f"{api.base}/instances/{instance}/file")
        with urllib.request.urlopen(request, timeout=60) as response:
            file.write_bytes(response.read())
    assert_references(file, series)


def _modalities(api: Orthanc, study: str) -> list[str]:
    return [s["MainDicomTags"]["Modality"] for s in api.call("GET", f"/studies/{study}/series")]
