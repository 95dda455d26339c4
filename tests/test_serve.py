"""``autoseg serve``: configuration, queue, routing, and the node end to end on loopback with pynetdicom
peers.

A tiny model (trained seconds on 4 mm synthetic boxes, exported to a .zip) predicts tiny synthetic CT series
(12 x 16 x 16 voxels); a pynetdicom Storage SCP in the test is the destination. Every server binds a free
loopback port and is stopped in a ``finally``. Real DICOM software (dcmtk, Orthanc), kill -9 and load:
``tests/test_serve_tools.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dicom_helpers import write_ct_series
from helpers import plan_and_preprocess_argv, tiny_case, write_nnunet_dataset
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    MRImageStorage,
    RTStructureSetStorage,
    SegmentationStorage,
    generate_uid,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

from autoseg.errors import ServeConfigError
from autoseg.io import Geometry
from autoseg.serve.config import (
    EXAMPLE_CONFIG,
    Destination,
    Route,
    SendPolicy,
    ServeConfig,
    ServeOverrides,
    load_config,
    parse_config,
)
from autoseg.serve.jobs import JobStore
from autoseg.serve.node import ServeNode, retry_failed, serve_status
from autoseg.serve.routes import SeriesInfo, choose_route

# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def serve_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny exported model (3d_fullres, fold ``all``) trained on 4 mm boxes: fast on any CT."""
    from autoseg.cli.main import main
    from autoseg.inference.model_file import export_model
    from autoseg.training import TrainConfig, train_fold

    root = tmp_path_factory.getbasetemp() / "serve_model"  # one per session, though two modules import it
    if (root / "tiny.zip").is_file():
        return root / "tiny.zip"
    generator = np.random.default_rng(0)
    coarse = Geometry((4.0, 4.0, 4.0), (0.0, 0.0, 0.0))
    cases = {}
    for i in range(4):  # HU-like: air around a soft-tissue box with a bone core, so real CT gives few parts
        _, labels, _ = tiny_case(generator)
        image = np.choose(labels, [-800.0, 40.0, 400.0]) + generator.normal(0, 20, labels.shape)
        cases[f"case_{i:03d}"] = (image[None].astype(np.float32), labels, coarse)
    dataset = write_nnunet_dataset(root / "Dataset001_Tiny", cases)
    workdir = root / "work"
    assert main(plan_and_preprocess_argv(dataset, workdir, "3d_fullres")) == 0
    config = TrainConfig(
        configuration="3d_fullres",
        fold="all",
        epochs=2,
        iterations_per_epoch=10,
        validation_iterations=1,
        num_workers=0,
        deterministic=True,
    )
    train_fold(workdir, config, show_progress=False)
    return export_model(workdir, root / "tiny.zip", configuration="3d_fullres", folds=["all"])


def synthetic_series(folder: Path, rng: np.random.Generator, *, modality: str = "CT") -> list[Path]:
    """A 12 x 16 x 16 CT (or MR) series at 4 mm with a bright box, one file per slice."""
    stored = (rng.normal(0, 20, size=(12, 16, 16)) + 224).astype(np.int16)  # HU -800 (intercept -1024)
    stored[4:8, 5:11, 5:11] += 840  # HU 40
    stored[5:7, 7:9, 7:9] += 360  # HU 400
    paths = write_ct_series(folder, stored, spacing_zyx=(4.0, 4.0, 4.0))
    for path in paths:
        dataset = dcmread(path)
        dataset.PatientName, dataset.PatientID = "Secret^Person", "PID-4711"
        if modality == "MR":
            dataset.Modality, dataset.SOPClassUID = "MR", MRImageStorage
            dataset.file_meta.MediaStorageSOPClassUID = MRImageStorage
        dataset.save_as(path, enforce_file_format=True)
    return paths


class Receiver:
    """A destination: a pynetdicom Storage SCP keeping every dataset it is sent (RTSTRUCT, SEG)."""

    def __init__(self, ae_title: str = "DEST", *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ae_title, self.ssl_context = ae_title, ssl_context
        self.received: list[Dataset] = []
        self.lock = threading.Lock()
        self.server: Any = None

    def _store(self, event: evt.Event) -> int:
        with self.lock:
            self.received.append(event.dataset)
        return 0x0000

    @contextlib.contextmanager
    def running(self, port: int = 0) -> Iterator[Receiver]:
        ae = AE(ae_title=self.ae_title)
        for sop_class in (RTStructureSetStorage, SegmentationStorage, CTImageStorage):
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification
        handlers: list[Any] = [(evt.EVT_C_STORE, self._store)]
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=handlers, ssl_context=self.ssl_context
        )
        try:
            yield self
        finally:
            self.server.shutdown()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def sop_uids(self) -> Counter[str]:
        with self.lock:
            return Counter(str(d.SOPInstanceUID) for d in self.received)


def send_series(
    port: int,
    paths: Sequence[Path],
    *,
    calling: str = "SCANNER",
    called: str = "AUTOSEG",
    tls: tuple[object, str] | None = None,
    release: bool = True,
) -> list[int]:
    """C-STORE ``paths`` in one association from ``calling``; the statuses (empty: association refused)."""
    ae = AE(ae_title=calling)
    for sop_class in (CTImageStorage, MRImageStorage, RTStructureSetStorage):
        ae.add_requested_context(sop_class, [dcmread(paths[0]).file_meta.TransferSyntaxUID])
    association = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls)  # type: ignore[arg-type]
    if not association.is_established:
        return []
    statuses = []
    try:
        for path in paths:
            status = association.send_c_store(dcmread(path))
            statuses.append(int(status.Status) if status else -1)
    finally:
        association.release() if release else association.abort()
    return statuses


def node_config(spool: Path, model: Path, destination_port: int, **changes: object) -> ServeConfig:
    """A loopback node on a free port sending to DEST@127.0.0.1:destination_port; fast retries."""
    config = ServeConfig(
        spool=spool,
        host="127.0.0.1",
        port=0,
        allowed_calling_aes=("SCANNER",),
        quiet_period_s=2.0,
        min_free_mb=0.0,
        device="cpu",
        threads=1,
        send=SendPolicy(attempts=2, backoff_s=0.1, max_backoff_s=0.2, timeout_s=5.0),
        destinations={"DEST": Destination("DEST", "DEST", "127.0.0.1", destination_port)},
        routes=(Route("ct", model, ("DEST",), modality=("CT",)),),
    )
    return replace(config, **changes).check()  # type: ignore[arg-type]


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def counts(spool: Path) -> dict[str, int]:
    return serve_status(spool).counts


# ---------------------------------------------------------------------------------------------- config


def test_the_example_configuration_loads_and_names_everything(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(EXAMPLE_CONFIG)
    config = load_config(path, ServeOverrides())
    assert config.ae_title == "AUTOSEG" and config.port == 11112 and config.quiet_period_s == 30
    assert [r.name for r in config.routes] == ["thorax-ct", "default"]
    assert config.routes[0].destinations == ("TPS", "PACS") and set(config.destinations) == {"TPS", "PACS"}
    assert config.keep_days == 7 and config.allowed_calling_aes == ("CT_SIM", "PACS")


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"node": {"spool": "s", "prot": 1}}, "node.prot"),
        ({"node": {"spool": "s", "port": "104"}}, "node.port"),
        ({"node": {"spool": "s", "port": 70000}}, "node.port"),
        ({"node": {"spool": "s", "allowed_calling_aes": ["A\\B"]}}, "node.allowed_calling_aes"),
        ({"node": {"spool": "s"}, "routes": [{"destinations": ["X"]}]}, "routes[0].model"),
        ({"node": {"spool": "s"}, "routes": [{"model": "m", "formats": ["png"]}]}, "routes[0].formats"),
        ({"destinations": {"TPS": {"host": "h", "port": 104}}}, "destinations.TPS.ae_title"),
        ({"node": {"spool": "s"}, "send": {"attempts": 0}}, "send.attempts"),
        ({"node": {"spool": "s"}, "tls": {"certificate": "c"}}, "tls.certificate"),
    ],
)
def test_configuration_errors_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ServeConfigError, match=re_key(key)):
        parse_config(table)


def re_key(key: str) -> str:
    return "^" + key.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")


def test_cross_key_checks_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    table = {"node": {"spool": "s"}, "routes": [{"model": "m", "destinations": ["PACS"]}]}
    path.write_text(json.dumps(table))
    with pytest.raises(ServeConfigError, match=r"^routes\[0\]\.destinations: unknown destination"):
        load_config(path, ServeOverrides(allow=("CT",)))
    with pytest.raises(ServeConfigError, match=r"^node\.allowed_calling_aes: empty"):
        load_config(path, ServeOverrides(send_to=("PACS@127.0.0.1:104",)))


def test_flags_alone_make_a_node_and_override_the_file(tmp_path: Path) -> None:
    flags = ServeOverrides(
        model=Path("m.zip"),
        spool=tmp_path,
        port=4242,
        ae_title="SEG1",
        send_to=("TPS@10.0.0.5:104",),
        allow=("CT1",),
        quiet_period_s=5,
        formats=("rtstruct", "dicom-seg"),
    )
    config = load_config(None, flags)
    assert (config.port, config.ae_title, config.quiet_period_s, config.allowed_calling_aes) == (
        4242,
        "SEG1",
        5,
        ("CT1",),
    )
    assert config.routes[0].model == Path("m.zip") and config.routes[0].formats == ("rtstruct", "dicom-seg")
    assert config.destinations["TPS"] == Destination("TPS", "TPS", "10.0.0.5", 104)
    path = tmp_path / "serve.toml"
    path.write_text(EXAMPLE_CONFIG)
    merged = load_config(path, replace(flags, model=None))
    assert merged.port == 4242 and all(r.destinations == ("TPS",) for r in merged.routes)
    with pytest.raises(ServeConfigError, match=r"^--send-to"):
        load_config(None, replace(flags, send_to=("TPS:104",)))


def test_routes_first_match_wins_with_wildcards_and_a_default() -> None:
    routes: tuple[Route, ...] = (
        Route("thorax", Path("a"), (), modality=("CT",), series_description=("*thorax*",)),
        Route("scanner", Path("b"), (), calling_ae=("CT_SIM",)),
        Route("mr", Path("c"), (), modality=("MR",), body_part=("HEAD", "BRAIN")),
    )

    def pick(modality: str, body_part: str, description: str, calling: str) -> str | None:
        route = choose_route(routes, SeriesInfo(modality, body_part, description, calling))
        return None if route is None else route.name

    assert pick("CT", "", "Thorax 3mm", "X") == "thorax"
    assert pick("CT", "", "abdomen", "CT_SIM") == "scanner"
    assert pick("MR", "brain", "t1", "X") == "mr"
    assert pick("MR", "KNEE", "t1", "X") is None
    routes = (*routes, Route("default", Path("d"), ()))
    assert pick("PT", "", "", "X") == "default"


def test_the_queue_survives_reopening_and_recovers_interrupted_jobs(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.receiving_job("1.2.3", "SCANNER", "CT", "")
    assert store.add_instance(job.id, "1.2.3.1") and not store.add_instance(job.id, "1.2.3.1")
    assert store.complete(job.id, "ct") and not store.complete(job.id, "ct")
    assert store.claim_next().state == "running"  # type: ignore[union-attr]
    other = store.receiving_job("1.2.4", "SCANNER", "CT", "")
    store.complete(other.id, "ct")
    store.claim_next()
    store.predicted(other.id, ["x_rtstruct.dcm"], 1.0)
    store.fail(other.id, "send", "DEST down")
    store.close()  # as if killed: one job running, one failed sending
    reopened = JobStore(tmp_path / "jobs.sqlite")
    assert reopened.get(job.id).instances == 1
    assert reopened.recover() == (1, 1)
    assert reopened.get(job.id).state == "queued" and reopened.get(other.id).state == "sending"
    reopened.fail(job.id, "predict", "bad series")
    assert reopened.retry_failed() == 1 and reopened.get(job.id).state == "queued"
    reopened.close()


# ---------------------------------------------------------------------------------------------- the node


def test_a_series_is_received_predicted_and_its_rtstruct_sent(
    serve_model: Path, tmp_path: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    paths = synthetic_series(tmp_path / "ct", rng)
    spool = tmp_path / "spool"
    caplog.set_level(logging.INFO, logger="autoseg")
    with Receiver().running() as receiver:
        both = Route("ct", serve_model, ("DEST",), formats=("rtstruct", "dicom-seg"), modality=("CT",))
        config = node_config(spool, serve_model, receiver.port, routes=(both,))
        with ServeNode(config) as node:
            assert send_series(node.port, paths) == [0] * len(paths)
            wait_for(lambda: counts(spool)["done"] == 1, what="the job to be done")
            first = receiver.sop_uids()
            assert sorted(d.Modality for d in receiver.received) == ["RTSTRUCT", "SEG"]
            source = dcmread(paths[0])
            rtstruct = next(d for d in receiver.received if d.Modality == "RTSTRUCT")
            referenced = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
            assert referenced.RTReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
            assert rtstruct.StudyInstanceUID == source.StudyInstanceUID
            # the same series again: a new job whose results carry the same UIDs (a recognisable re-send)
            assert send_series(node.port, paths) == [0] * len(paths)
            wait_for(lambda: counts(spool)["done"] == 2, what="the second job")
    assert set(receiver.sop_uids()) == set(first) and all(n == 2 for n in receiver.sop_uids().values())
    messages = [r.getMessage() for r in caplog.records]
    for event in ("event=received", "event=complete", "event=predicted", "event=sent", "event=done"):
        assert any(event in m for m in messages), event
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert not any("Secret" in m or "PID-4711" in m for m in info)  # no patient data above DEBUG
    for path in (spool / "jobs").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700


def test_bad_input_is_refused_or_failed_and_the_node_keeps_serving(
    serve_model: Path, tmp_path: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    good = synthetic_series(tmp_path / "good", rng)
    gap = synthetic_series(tmp_path / "gap", rng)
    mr = synthetic_series(tmp_path / "mr", rng, modality="MR")
    spool = tmp_path / "spool"
    with Receiver().running() as receiver, ServeNode(node_config(spool, serve_model, receiver.port)) as node:
        assert send_series(node.port, good, calling="STRANGER") == []  # calling AE not allowed
        corrupt = dcmread(good[0])
        del corrupt.PixelData  # a CT "image" without pixels
        corrupt.SOPInstanceUID = generate_uid()
        corrupt.save_as(tmp_path / "corrupt.dcm", enforce_file_format=True)
        assert send_series(node.port, [tmp_path / "corrupt.dcm"]) == [0xA900]
        assert send_series(node.port, gap[:5] + gap[7:]) == [0] * 10  # slices 5 and 6 never come
        assert send_series(node.port, mr) == [0] * len(mr)  # the routes know no MR
        assert send_series(node.port, good) == [0] * len(good)
        wait_for(lambda: counts(spool)["done"] == 1 and counts(spool)["failed"] == 1, what="done + failed")
        status = serve_status(spool)
    assert status.counts["unmatched"] == 1 and status.counts["received"] == 0
    failed = next(j for j in status.jobs if j.state == "failed")
    assert failed.failed_stage == "predict" and "slice(s) missing" in (failed.reason or "")
    assert len(receiver.received) == 1
    # send_series also proposes RTSTRUCT storage, a non-image class: refused at negotiation, logged
    messages = [r.getMessage() for r in caplog.records]
    assert any("event=context_refused" in m and "481.3" in m for m in messages)


def test_a_full_spool_refuses_associations(
    serve_model: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    paths = synthetic_series(tmp_path / "ct", rng)
    config = node_config(tmp_path / "spool", serve_model, 9, min_free_mb=1e12)  # more than any disk has
    with ServeNode(config) as node:
        assert send_series(node.port, paths) == []
    assert counts(tmp_path / "spool")["received"] == 0


# pynetdicom 3.0.4 leaves the socket of a refused connection unclosed (a ResourceWarning when collected)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_destination_that_stays_down_fails_the_job_until_retried(
    serve_model: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    paths = synthetic_series(tmp_path / "ct", rng)
    spool = tmp_path / "spool"
    receiver = Receiver()
    with receiver.running():
        port = receiver.port
    with ServeNode(node_config(spool, serve_model, port)) as node:  # nobody listens on the port now
        send_series(node.port, paths)
        wait_for(lambda: counts(spool)["failed"] == 1, what="the send to fail")
        failed = serve_status(spool).jobs[0]
        assert failed.failed_stage == "send" and "2 tries failed" in (failed.reason or "")
        with receiver.running(port):
            assert retry_failed(spool) == 1
            wait_for(lambda: counts(spool)["done"] == 1, what="the retried job")
    assert len(receiver.received) == 1


def test_the_cli_prints_the_example_and_the_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autoseg.cli.main import main

    assert main(["serve", "--example-config"]) == 0
    assert "[[routes]]" in capsys.readouterr().out
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.receiving_job("1.2.3", "SCANNER", "CT", "")
    store.complete(job.id, "ct")
    store.close()
    assert main(["serve", "--status", "--spool", str(tmp_path)]) == 0
    assert "queued 1" in capsys.readouterr().out
    assert main(["serve", "--status", "--json", "--spool", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["jobs"][0]["series"] == "1.2.3"
    assert main(["serve", "--status", "--spool", str(tmp_path / "nothing")]) == 1
    assert main(["serve", "--spool", str(tmp_path), "-m", "m.zip", "--send-to", "bad"]) == 2
    assert "--send-to bad: expected AE@HOST:PORT" in capsys.readouterr().err
    flags = ["serve", "--spool", str(tmp_path), "-m", str(tmp_path / "none.zip"), "--send-to", "A@h:1"]
    assert main([*flags, "--allow", "CT"]) == 2
    assert "routes[0].model: " in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- TLS


def make_certificates(folder: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    files: dict[str, Path] = {}

    def issue(name: str, issuer_key: Any, issuer: x509.Name | None, usage: list[Any] | None) -> Any:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=usage is None, path_length=None), critical=True)
        )
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        certificate = builder.sign(issuer_key or key, hashes.SHA256())
        files[name] = folder / f"{name}.crt"
        files[name].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        files[f"{name}_key"] = folder / f"{name}.key"
        files[f"{name}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return key, subject

    ca_key, ca_name = issue("ca", None, None, None)
    issue("server", ca_key, ca_name, [ExtendedKeyUsageOID.SERVER_AUTH])
    issue("client", ca_key, ca_name, [ExtendedKeyUsageOID.CLIENT_AUTH])
    return files


# failed handshakes leave sockets and server-thread exceptions behind in pynetdicom 3.0.4
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dicom_tls_with_client_certificates_both_ways(
    serve_model: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    from autoseg.serve.config import TlsSettings

    pytest.importorskip("cryptography")
    files = make_certificates(tmp_path)
    paths = synthetic_series(tmp_path / "ct", rng)
    spool = tmp_path / "spool"
    destination_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    destination_tls.load_cert_chain(files["server"], files["server_key"])
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files["ca"]))
    client.load_cert_chain(files["client"], files["client_key"])
    anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files["ca"]))
    with Receiver(ssl_context=destination_tls).running() as receiver:
        secure = Destination(
            "DEST", "DEST", "127.0.0.1", receiver.port, tls=True, ca_certificates=files["ca"]
        )
        config = node_config(
            spool,
            serve_model,
            receiver.port,
            tls=TlsSettings(
                files["server"], files["server_key"], files["ca"], require_client_certificate=True
            ),
            destinations={"DEST": secure},
        )
        with ServeNode(config) as node:
            assert send_series(node.port, paths) == []  # plain TCP to a TLS node
            assert send_series(node.port, paths, tls=(anonymous, "127.0.0.1")) == []  # no client certificate
            assert send_series(node.port, paths, tls=(client, "127.0.0.1")) == [0] * len(paths)
            wait_for(lambda: counts(spool)["done"] == 1, what="the job sent over TLS")
    assert [d.Modality for d in receiver.received] == ["RTSTRUCT"]


# ---------------------------------------------------------------------------------------------- the rest


def test_importing_serve_and_cli_help_load_neither_pynetdicom_nor_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\nimport autoseg.serve\nfrom autoseg.cli.main import main\n"
        "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'pynetdicom', 'highdicom') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_retention_deletes_finished_and_unmatched_inputs_but_keeps_failed(tmp_path: Path) -> None:
    from autoseg.serve.spool import Spool
    from autoseg.serve.worker import Worker

    spool = Spool(tmp_path / "spool")
    spool.create()
    store = JobStore(spool.queue)
    ids = []
    for uid, route in (("1.1", "ct"), ("1.2", None), ("1.3", "ct")):
        job = store.receiving_job(uid, "SCANNER", "CT", "")
        spool.write_instance(job.id, f"{uid}.1", b"x")
        store.complete(job.id, route)
        ids.append(job.id)
    store.claim_next()
    store.predicted(ids[0], [], 0.0)
    store.done(ids[0])
    store.fail(ids[2], "predict", "bad")
    config = ServeConfig(spool=spool.root, keep_days=0, unmatched_keep_days=0, routes=())
    Worker(config, spool, store, threading.Event()).apply_retention()
    assert [spool.job_folder(i).exists() for i in ids] == [False, False, True]
    assert [store.get(i).purged for i in ids] == [True, True, False]
    store.close()


def test_result_uids_follow_the_seed(tmp_path: Path, rng: np.random.Generator) -> None:
    from autoseg.dicom.rtstruct import write_rtstruct
    from autoseg.dicom.seg import write_dicom_seg
    from autoseg.dicom.series import single_series

    synthetic_series(tmp_path / "ct", rng)
    series = single_series(tmp_path / "ct")
    labels = np.zeros((12, 16, 16), np.uint8)
    labels[4:8, 5:11, 5:11] = 1

    def uids(name: str, seed: str | None) -> tuple[str, str]:
        write_rtstruct(labels, series, {1: "organ"}, tmp_path / f"{name}_rs.dcm", uid_seed=seed)
        write_dicom_seg(labels, series, {1: "organ"}, tmp_path / f"{name}_seg.dcm", uid_seed=seed)
        found = [dcmread(tmp_path / f"{name}_{kind}.dcm") for kind in ("rs", "seg")]
        assert found[0].SeriesInstanceUID != found[1].SeriesInstanceUID
        return found[0].SOPInstanceUID, found[1].SOPInstanceUID

    assert uids("a", "model|series") == uids("b", "model|series")
    assert uids("c", "other|series") != uids("a", "model|series")
    assert uids("d", None) != uids("e", None)


def test_mixed_geometry_and_corrupt_pixel_data_fail_their_jobs_only(
    serve_model: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    mixed = synthetic_series(tmp_path / "mixed", rng)
    odd = dcmread(mixed[3])
    odd.Rows, odd.Columns = 8, 8  # one slice of another size
    odd.PixelData = np.zeros((8, 8), "<i2").tobytes()
    odd.save_as(mixed[3], enforce_file_format=True)
    corrupt = synthetic_series(tmp_path / "corrupt", rng)
    broken = dcmread(corrupt[5])
    broken.PixelData = broken.PixelData[:100]  # truncated pixel data
    broken.save_as(corrupt[5], enforce_file_format=True)
    good = synthetic_series(tmp_path / "good", rng)
    spool = tmp_path / "spool"
    with Receiver().running() as receiver, ServeNode(node_config(spool, serve_model, receiver.port)) as node:
        for paths in (mixed, corrupt, good):
            assert send_series(node.port, paths) == [0] * len(paths)
        wait_for(lambda: counts(spool)["done"] == 1 and counts(spool)["failed"] == 2, what="done + 2 failed")
        failed = [job for job in serve_status(spool).jobs if job.state == "failed"]
    assert all(job.failed_stage == "predict" and job.reason for job in failed)
    assert len(receiver.received) == 1


def test_a_write_that_fails_is_answered_out_of_resources_and_nothing_is_recorded(
    serve_model: Path, tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from autoseg.serve.spool import Spool

    paths = synthetic_series(tmp_path / "ct", rng)
    spool = tmp_path / "spool"

    def disk_full(self: Spool, job_id: int, sop_instance_uid: str, data: bytes) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    with ServeNode(node_config(spool, serve_model, 9)) as node:
        monkeypatch.setattr(Spool, "write_instance", disk_full)
        assert send_series(node.port, paths[:3]) == [0xA700] * 3  # the sender keeps them and retries
        monkeypatch.undo()
        assert send_series(node.port, paths[:3]) == [0] * 3  # space again: accepted
        wait_for(lambda: counts(spool)["received"] == 0, what="completion")
    assert [job.instances for job in serve_status(spool).jobs] == [3]  # only what was written counts
