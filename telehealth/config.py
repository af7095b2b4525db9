"""Settings: environment variables `TELEHEALTH_*`, overridden by CLI flags.

Everything has an embedded default so `telehealth serve` runs on a fresh machine: SQLite and
the embedded S3 server inside the data folder, every service bound to 127.0.0.1.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DuplicatePolicy(StrEnum):
    """What to do when a SOP Instance UID arrives again with different bytes.

    `replace`: the new bytes become the current version; the old object stays in the store
    (recorded as superseded) so nothing is lost. A modality resends after a correction, so this
    is the default. `reject`: the new bytes are refused with a failure status.
    """

    REPLACE = "replace"
    REJECT = "reject"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TELEHEALTH_", extra="ignore")

    data_dir: Path = Path("data")

    # Database: SQLite file in the data folder unless a URL is given
    # (e.g. postgresql+psycopg://user@127.0.0.1:5432/telehealth).
    database_url: str | None = None

    # Object store: the embedded S3 server unless an endpoint is given (host:port).
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_bucket: str = "telehealth"
    s3_secure: bool = False
    s3_region: str | None = None
    s3_timeout_seconds: float = 10.0

    http_host: str = "127.0.0.1"
    http_port: int = 8042
    # HTTPS served by the hub itself; or terminate TLS at a proxy and list its address here:
    # X-Forwarded-For/-Proto are believed only from these addresses (uvicorn's proxy headers).
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    forwarded_allow_ips: str = "127.0.0.1"
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    ae_title: str = "TELEHEALTH"
    # Refuse associations from AE titles nobody registered; an admin may open the door.
    accept_unknown_callers: bool = False
    # Institution code that owns studies from unknown callers when they are accepted.
    unknown_caller_institution: str | None = None
    max_associations: int = 16
    # DICOM node processes sharing the port, the least busy accepting (dicom_node.listener);
    # the GIL lets one process use one core, so parallel associations need more than one.
    dicom_workers: int = 1
    # Largest PDU we accept; big PDUs mean fewer Python round trips per instance.
    max_pdu_bytes: int = 1_048_576
    # Associations that only store or echo are served by the hub's own lean upper layer
    # (dicom_node.fast_store); off hands every association to pynetdicom.
    dicom_fast_store: bool = True
    dicom_tls_cert: Path | None = None
    dicom_tls_key: Path | None = None
    dicom_tls_ca: Path | None = None  # when set, callers must present a certificate it signed
    # CA bundle that signed the certificates of C-MOVE destinations registered for TLS (the
    # system's CAs when unset); the hub presents dicom_tls_cert/key to them when set.
    dicom_move_tls_ca: Path | None = None

    duplicate_policy: DuplicatePolicy = DuplicatePolicy.REPLACE
    # Refuse new instances (Out of Resources) when the spool disk has less than this free.
    spool_min_free_bytes: int = 512 * 1024 * 1024
    # Uploaded instances stay on local disk up to this size, for fast reads; 0 turns it off.
    read_cache_bytes: int = 4 * 1024**3
    upload_workers: int = 4
    upload_retry_seconds: float = 2.0
    study_stable_seconds: float = 60.0
    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    # STOW-RS (PS3.18 §10.5). The body is read as it arrives and stops at the request limit;
    # one part at a time is held in memory until ingested, so the part limit bounds memory.
    stow_max_bytes: int = 2 * 1024 * 1024 * 1024
    stow_max_part_bytes: int = 1024 * 1024 * 1024

    # Signing key for bearer tokens; generated into the data folder when not set.
    secret_key: str | None = None
    token_ttl_minutes: int = 12 * 60
    cookie_secure: bool = False
    cors_origins: list[str] = Field(default_factory=list)
    # The OHIF viewer's build (npm @ohif/app dist/), served at /ohif/; by default the one that
    # `npm ci` in viewer/ohif installs. Without it the hub runs without /ohif/.
    ohif_dist: Path | None = None
    web_dist: Path | None = None  # the web app's build (default: viewer/app/dist)

    # Reading cases. A claim is a lease the reader's client renews; an admin's assignment
    # gets a longer one because the reader may not be at the screen yet.
    case_lease_seconds: int = 300
    case_assign_lease_seconds: int = 1800
    case_escalation_check_seconds: float = 15.0
    # An overdue case offered up waits this long before it is offered one level higher.
    case_escalation_repeat_minutes: int = 30
    # Time-of-day routing rules and the times in notifications use this zone.
    case_timezone: str = "Asia/Shanghai"
    # A stable study without a request becomes a case; priority/service by modality
    # ("priority/service"; "*" for any other modality).
    case_auto_create: bool = True
    case_auto_defaults: dict[str, str] = Field(
        default_factory=lambda: {
            "ECG": "urgent/ecg",
            "US": "routine/ultrasound",
            "*": "routine/imaging",
        }
    )
    case_auto_skip_modalities: list[str] = Field(default_factory=lambda: ["SR", "KO", "PR", "DOC"])
    # Loaded into empty routing tables on start; default telehealth/cases/routing.default.yaml.
    routing_file: Path | None = None

    # Reports. An unacknowledged critical result (危急值) goes to the clinic's admins and the
    # reading group lead after the first interval, to the consortium's admins after the second
    # (minutes from the flag). The PDF font: default Noto Sans CJK SC (noto-cjk-sans-otc).
    report_critical_escalation_minutes: int = 10
    report_critical_second_escalation_minutes: int = 20
    report_font: str | None = None
    # Services whose signed reports need a second reader (double reading), e.g. ["imaging"].
    report_double_reading_services: list[str] = Field(default_factory=list)

    # ECG (issue 5). Triage: measurements past these raise an ECG case's priority; request
    # flags (chest_pain, syncope, palpitations) listed here make it STAT, others URGENT.
    ecg_triage_hr_low_bpm: float = 40.0
    ecg_triage_hr_high_bpm: float = 150.0
    ecg_triage_qtc_ms: float = 500.0  # QTc (Bazett)
    ecg_triage_pause_s: float = 3.0
    ecg_triage_stat_requests: list[str] = Field(default_factory=lambda: ["chest_pain"])
    ecg_max_upload_bytes: int = 50 * 1024 * 1024
    # A CJK font for rendered ECGs; by default Noto Sans CJK from the noto-cjk-sans-otc package.
    ecg_font: Path | None = None

    # Consults (issue 7). The signalling server: run by `telehealth serve` on its own port, or
    # alone (`telehealth signaling`); clients get `signaling_public_url` (default
    # ws://host:port) with their join token, which lives `consult_join_token_seconds`.
    signaling_host: str = "127.0.0.1"
    signaling_port: int = 8043
    signaling_public_url: str | None = None
    signaling_max_participants: int = 4  # a browser mesh beyond 4 costs each uplink too much
    signaling_max_message_bytes: int = 64 * 1024  # an SDP with many candidates is ~10 kB
    signaling_rate_per_second: float = 50.0
    signaling_rate_burst: int = 200  # ICE candidates arrive in a burst when a call starts
    signaling_heartbeat_seconds: float = 20.0
    consult_join_token_seconds: int = 120
    # ICE servers handed out with the join token. TURN credentials are minted per join with
    # coturn's shared-secret scheme (turnserver --use-auth-secret --static-auth-secret=…).
    ice_stun_urls: list[str] = Field(default_factory=list)
    ice_turn_urls: list[str] = Field(default_factory=list)
    turn_secret: str | None = None
    turn_credential_seconds: int = 4 * 3600  # long enough for a consult, short if leaked

    # Several hub and DICOM node processes on one database and object store (issue 8): events
    # cross processes through Redis pub/sub on this channel (telehealth.cluster). Unset: one
    # process, in-process events only.
    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0
    redis_channel: str = "telehealth:events"

    # Retention rules (telehealth/retention/schemas.py); unset: nothing is ever removed.
    retention_file: Path | None = None
    retention_check_hours: float = 24.0

    # Prometheus: GET /metrics with `Authorization: Bearer <metrics_token>` (or an admin's
    # login). A process without HTTP (dicom-node) serves its own on metrics_port, unprotected,
    # so it binds to loopback unless told otherwise.
    metrics_token: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    log_level: str = "INFO"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def read_cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def s3_dir(self) -> Path:
        return self.data_dir / "s3"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'telehealth.db').resolve()}"
