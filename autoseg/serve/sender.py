"""Sending results: C-STORE to a destination (plain TCP or DICOM TLS), retried with exponential backoff."""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE

from autoseg.errors import ServeError
from autoseg.serve.config import Destination, SendPolicy

logger = logging.getLogger(__name__)


def send_with_retries(
    path: Path, destination: Destination, policy: SendPolicy, calling_ae: str, stop: threading.Event
) -> str:
    """C-STORE ``path`` to ``destination``; up to ``policy.attempts`` tries with doubling waits.

    Returns:
        the SOP Instance UID sent.

    Raises:
        ServeError: every try failed (the message has the last reason), or ``stop`` was set while waiting.
    """
    wait = policy.backoff_s
    reason = "not tried"
    for attempt in range(1, policy.attempts + 1):
        try:
            return send_once(path, destination, policy.timeout_s, calling_ae)
        except ServeError as error:
            reason = error.message
        if attempt < policy.attempts:
            logger.warning(
                "event=send_retry destination=%s attempt=%d/%d wait_s=%.1f reason=%s",
                destination.name,
                attempt,
                policy.attempts,
                wait,
                reason,
            )
            if stop.wait(wait):
                raise ServeError(f"{destination.name}: stopped while retrying ({reason})")
            wait = min(wait * 2, policy.max_backoff_s)
    raise ServeError(f"{destination.name}: {policy.attempts} tries failed, last: {reason}")


def send_once(path: Path, destination: Destination, timeout_s: float, calling_ae: str) -> str:
    """One association, one C-STORE; returns the SOP Instance UID. Raises ServeError with the reason."""
    dataset = dcmread(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    tls = (client_context(destination), destination.host) if destination.tls else None
    address = f"{destination.ae_title}@{destination.host}:{destination.port}"
    try:
        association = ae.associate(
            destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls
        )
    except (OSError, ssl.SSLError) as error:
        raise ServeError(f"{address}: cannot connect ({error})") from None
    if not association.is_established:
        why = "association rejected" if association.is_rejected else "no association (refused or aborted)"
        raise ServeError(f"{address}: {why}")
    try:
        status = association.send_c_store(dataset)
    finally:
        association.release()
    code = int(status.get("Status", -1)) if status else -1
    if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success, or a success-with-warning
        text = "no response" if code == -1 else f"status 0x{code:04X}"
        raise ServeError(f"{address}: C-STORE {text}")
    return str(dataset.SOPInstanceUID)


def client_context(destination: Destination) -> ssl.SSLContext:
    """TLS for a destination: its certificate checked (``ca_certificates``, else the system's), our client
    certificate when configured."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(destination.ca_certificates) if destination.ca_certificates else None,
        )
        if destination.certificate:
            key = str(destination.private_key) if destination.private_key else None
            context.load_cert_chain(str(destination.certificate), key)
    except (OSError, ssl.SSLError) as error:
        raise ServeError(f"destinations.{destination.name}: unusable TLS files ({error})") from None
    return context
