"""API shapes of the archive."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class StudyOut(BaseModel):
    study_instance_uid: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_time: str
    accession_number: str
    description: str
    modalities: list[str]
    institution_id: int
    num_series: int
    num_instances: int
    size_bytes: int
    first_received_at: datetime
    last_received_at: datetime
    stable: bool


class StudyList(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[StudyOut]
