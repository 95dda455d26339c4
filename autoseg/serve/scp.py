"""The Storage SCP of ``autoseg serve``: who may associate, what is accepted, and how an instance is kept.

Accepted: C-ECHO, and CT and MR Image Storage in implicit/explicit VR little endian, deflated, and every
compressed transfer syntax this installation's pydicom can decode (JPEG 2000 with pylibjpeg-openjpeg...).
Anything else is refused at negotiation and logged. An association is rejected when the calling AE title
is not allowed, or when the spool has less than ``min_free_mb`` free (transient: "local limit exceeded").
A C-STORE is answered success only after the instance is fsynced in the spool and recorded in the queue;
a full disk answers 0xA700 (out of resources), an unreadable dataset 0xC210, a non-image 0xA900.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    MRImageStorage,
    RLELossless,
)
from pynetdicom import AE, evt

from autoseg.errors import ServeError
from autoseg.serve.config import ServeConfig, TlsSettings
from autoseg.serve.jobs import JobStore
from autoseg.serve.spool import Spool

logger = logging.getLogger(__name__)

STORAGE_CLASSES = (CTImageStorage, MRImageStorage)
SUCCESS, OUT_OF_RESOURCES, NOT_AN_IMAGE, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC210


def decodable_transfer_syntaxes() -> list[UID]:
    """Uncompressed syntaxes plus the compressed ones pydicom can decode here."""
    from pydicom.pixels.decoders.base import get_decoder

    found = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]
    for syntax in [*JPEG2000TransferSyntaxes, *JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, RLELossless]:
        try:
            if get_decoder(syntax).is_available:
                found.append(syntax)
        except NotImplementedError:
            continue
    return list(dict.fromkeys(found))


class StorageHandlers:
    """The pynetdicom event handlers; ``on_release(job_ids)`` completes the series an association sent."""

    def __init__(
        self,
        config: ServeConfig,
        spool: Spool,
        store: JobStore,
        on_release: Callable[[set[int]], None],
    ) -> None:
        self.config, self.spool, self.store, self.on_release = config, spool, store, on_release
        self.lock = threading.Lock()
        self.sent: dict[int, set[int]] = {}  # id(association) -> job ids it sent instances to

    def events(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self.requested),
            (evt.EVT_ACCEPTED, self.accepted),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self.store_instance),
            (evt.EVT_RELEASED, self.released),
            (evt.EVT_ABORTED, self.aborted),
        ]

    def requested(self, event: Any) -> None:
        """Reject a calling AE that is not allowed, or any association while the spool is nearly full."""
        calling = str(event.assoc.requestor.primitive.calling_ae_title).strip()
        address = event.assoc.requestor.address
        if not self.config.allow_any_calling_ae and calling not in self.config.allowed_calling_aes:
            logger.warning(
                "event=rejected calling_ae=%s address=%s reason=calling AE not allowed", calling, address
            )
            event.assoc.acse.send_reject(
                0x01, 0x01, 0x03
            )  # permanent, service user, calling AE not recognised
            return
        free_mb = self.spool.free_mb()
        if free_mb < self.config.min_free_mb:
            logger.error(
                "event=rejected calling_ae=%s reason=spool has %.0f MiB free, below min_free_mb %.0f",
                calling,
                free_mb,
                self.config.min_free_mb,
            )
            event.assoc.acse.send_reject(0x02, 0x03, 0x02)  # transient, presentation, local limit exceeded

    def accepted(self, event: Any) -> None:
        calling = str(event.assoc.requestor.ae_title).strip()
        for context in event.assoc.rejected_contexts:
            logger.warning(
                "event=context_refused calling_ae=%s sop_class=%s transfer_syntaxes=%s reason=%s",
                calling,
                context.abstract_syntax,
                ",".join(context.transfer_syntax),
                "not an accepted image storage class or transfer syntax",
            )

    def store_instance(self, event: Any) -> int:
        """C-STORE: spool the instance durably, then answer."""
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            dataset = event.dataset
            sop_uid, series_uid = str(dataset.SOPInstanceUID), str(dataset.SeriesInstanceUID)
            modality, description = (
                str(dataset.get("Modality", "")),
                str(dataset.get("SeriesDescription", "")),
            )
            has_pixels = "PixelData" in dataset
        except Exception as error:  # pydicom raises many kinds on a corrupt stream; answer, log, go on
            logger.warning(
                "event=instance_refused calling_ae=%s reason=unreadable dataset (%s)", calling, error
            )
            return CANNOT_UNDERSTAND
        if not has_pixels:
            logger.warning(
                "event=instance_refused series=%s sop=%s reason=no pixel data", series_uid, sop_uid
            )
            return NOT_AN_IMAGE
        logger.debug(
            "instance %s of patient %s (%s)",
            sop_uid,
            dataset.get("PatientName", ""),
            dataset.get("PatientID", ""),
        )
        if self.spool.free_mb() < self.config.min_free_mb / 2:
            logger.error(
                "event=instance_refused series=%s sop=%s reason=spool nearly full", series_uid, sop_uid
            )
            return OUT_OF_RESOURCES
        job = self.store.receiving_job(series_uid, calling, modality, description)
        try:
            self.spool.write_instance(job.id, sop_uid, event.encoded_dataset())
        except OSError as error:
            logger.error("event=instance_refused job=%d series=%s reason=%s", job.id, series_uid, error)
            return OUT_OF_RESOURCES
        if self.store.add_instance(job.id, sop_uid) and job.instances == 0:
            logger.info(
                "event=received job=%d series=%s calling_ae=%s modality=%s",
                job.id,
                series_uid,
                calling,
                modality,
            )
        with self.lock:
            self.sent.setdefault(id(event.assoc), set()).add(job.id)
        return SUCCESS

    def released(self, event: Any) -> None:
        with self.lock:
            jobs = self.sent.pop(id(event.assoc), set())
        if jobs and self.config.complete_on_release:
            self.on_release(jobs)

    def aborted(self, event: Any) -> None:
        with self.lock:
            jobs = self.sent.pop(id(event.assoc), set())
        if jobs:
            logger.warning(
                "event=aborted jobs=%s reason=association aborted, series complete after the quiet period",
                ",".join(map(str, sorted(jobs))),
            )


def storage_ae(config: ServeConfig) -> AE:
    """The listening AE: our title, the accepted contexts, generous timeouts."""
    ae = AE(ae_title=config.ae_title)
    ae.maximum_pdu_size = 0  # no limit
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 120
    syntaxes = decodable_transfer_syntaxes()
    for sop_class in STORAGE_CLASSES:
        ae.add_supported_context(sop_class, syntaxes)
    ae.add_supported_context(UID("1.2.840.10008.1.1"))
    ae.maximum_associations = 16
    return ae


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """TLS for the listening node: our certificate; client certificates checked against
    ``ca_certificates`` (required with ``require_client_certificate``)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
        if tls.ca_certificates:
            context.load_verify_locations(cafile=str(tls.ca_certificates))
    except (OSError, ssl.SSLError) as error:
        raise ServeError(f"tls: cannot load {tls.certificate} / {tls.private_key}: {error}") from None
    if tls.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_certificates:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context
