"""C-MOVE to a destination registered for TLS: a real pynetdicom SCP listening with TLS on a
certificate openssl made for the test; the hub verifies it against its move CA setting."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt

from telehealth.app import create_app
from telehealth.auth import service as auth
from telehealth.auth.models import Role
from telehealth.db import transaction
from telehealth.hub import Hub
from telehealth.institutions.service import add_application_entity, get_move_destination
from tests.conftest import free_port, seed_consortium
from tests.dicom_node.test_query_retrieve import (
    STUDY_ROOT_MOVE,
    SUB_OPERATIONS_FAILED,
    SUCCESS,
    World,
    audit_rows,
    build_world,
    final,
    identifier,
    move,
    sent_digests,
)
from tests.dicom_node.test_tls import self_signed
from tests.faults import dataset_sha256

PASSWORD = "a-long-password"


@contextmanager
def tls_scp(cert: tuple[Path, Path], received: dict[str, str]) -> Iterator[int]:
    """A storage SCP that speaks only TLS, with this certificate; SOP UID → dataset digest."""

    def on_store(event: evt.Event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = dataset_sha256(
            bytes(event.encoded_dataset())
        )
        return SUCCESS

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert[0]), str(cert[1]))
    ae = AE("A_TLS")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
        ssl_context=context,
    )
    try:
        yield port
    finally:
        server.shutdown()


def register(world: World, ae_title: str, port: int, *, tls: bool) -> None:
    with transaction(world.hub.factory) as session:
        add_application_entity(
            session,
            ae_title=ae_title,
            institution_code="CLINIC_A",
            host="127.0.0.1",
            port=port,
            tls=tls,
        )


def test_move_to_a_tls_destination(hub_factory: Callable[..., Hub], tmp_path: Path) -> None:
    destination = self_signed(tmp_path, "a-pacs")  # for 127.0.0.1, its own CA
    stranger = self_signed(tmp_path, "stranger")
    hub = hub_factory(dicom_move_tls_ca=destination[0])
    world = build_world(hub, tmp_path)
    study = identifier("STUDY", StudyInstanceUID=world.study["A"])

    received: dict[str, str] = {}
    with tls_scp(destination, received) as port:
        register(world, "A_TLS", port, tls=True)
        status, _ = final(move(world, "A_WS", "A_TLS", study, STUDY_ROOT_MOVE))
        assert (status.Status, status.NumberOfCompletedSuboperations) == (SUCCESS, 3)
        assert received == sent_digests(world, "A")  # the stored bytes, over TLS

        # The same SCP registered without TLS: plain DICOM gets no association.
        received.clear()
        register(world, "A_PLAIN", port, tls=False)
        status, _ = final(move(world, "A_WS", "A_PLAIN", study, STUDY_ROOT_MOVE))
        assert (status.Status, status.NumberOfFailedSuboperations) == (SUB_OPERATIONS_FAILED, 3)
    assert received == {}

    # A TLS peer whose certificate the hub's move CA did not sign gets nothing.
    with tls_scp(stranger, received) as port:
        register(world, "A_IMPOSTOR", port, tls=True)
        status, _ = final(move(world, "A_WS", "A_IMPOSTOR", study, STUDY_ROOT_MOVE))
        assert (status.Status, status.NumberOfFailedSuboperations) == (SUB_OPERATIONS_FAILED, 3)
    assert received == {}
    [*_, done] = audit_rows(world, "dimse.c_move")
    assert "cannot reach A_IMPOSTOR" in done[3] and "(TLS)" in done[3]


def test_admin_api_marks_a_destination_for_tls(hub_factory: Callable[..., Hub]) -> None:
    hub = hub_factory(dicom=False)
    with transaction(hub.factory) as session:
        seed_consortium(session)
        auth.create_user(
            session, username="admin", password=PASSWORD, role=Role.ADMIN, institution_code="COUNTY"
        )
    with TestClient(create_app(hub)) as client:
        login = client.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
        client.cookies.clear()
        headers = {"authorization": f"Bearer {login.json()['access_token']}"}
        body = {"ae_title": "A_PACS", "institution_code": "CLINIC_A", "host": "pacs.a", "port": 104}
        created = client.post("/api/application-entities", json=body, headers=headers)
        assert created.status_code == 201, created.text
        assert created.json()["tls"] is False  # off unless asked for
        entity_id = created.json()["id"]
        updated = client.put(
            f"/api/application-entities/{entity_id}", json={**body, "tls": True}, headers=headers
        )
        assert updated.status_code == 200, updated.text
        assert updated.json()["tls"] is True
        # An update that does not mention TLS (the web app's form) leaves it on.
        kept = client.put(
            f"/api/application-entities/{entity_id}", json={**body, "port": 105}, headers=headers
        )
        assert (kept.json()["port"], kept.json()["tls"]) == (105, True)
        listed = client.get("/api/application-entities", headers=headers).json()
        assert [e["tls"] for e in listed if e["ae_title"] == "A_PACS"] == [True]
    with transaction(hub.factory) as session:
        assert get_move_destination(session, "A_PACS").tls is True
