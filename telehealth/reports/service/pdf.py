"""The signed report as a PDF, with a CJK font embedded so Chinese renders on any reader.

fpdf2 embeds a subset of the font (a few kB for a report). reportlab cannot: Noto Sans CJK
has PostScript (CFF) outlines, which its TTF embedding refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from telehealth.ecg.service.render import choose_font


@dataclass(frozen=True)
class Sheet:
    """Everything printed on the report, already as text."""

    title: str
    title_en: str
    hospital: str  # the reading institution
    clinic: str  # the requesting institution
    patient: list[tuple[str, str]]  # (label, value) pairs
    fields: list[tuple[str, str]]
    findings: str
    impression: str
    signed: str  # "签名 Signed: 李医生 2026-03-02 16:05"
    critical: list[str] = field(default_factory=list)
    addenda: list[tuple[str, str]] = field(default_factory=list)  # (signed line, text)
    status: str = ""
    second_reading: str = ""  # a second reader's verdict on the first report


def render_pdf(sheet: Sheet, *, font_path: str | None = None) -> bytes:
    """One A4 report. Text is set as text, never interpreted as markup."""
    choice = choose_font(font_path)
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_title(f"{sheet.title} {sheet.title_en}".strip())
    pdf.set_creator("telehealth hub")
    family = "helvetica"
    if choice.path is not None:
        kwargs: dict[str, Any] = {}
        if choice.path.lower().endswith((".ttc", ".otc")):
            kwargs["collection_font_number"] = choice.index
        pdf.add_font("cjk", fname=choice.path, **kwargs)
        family = "cjk"
    pdf.add_page()
    width = pdf.epw

    def line(text: str, size: float = 10.5, height: float = 6, align: str = "L") -> None:
        pdf.set_font(family, size=size)
        pdf.multi_cell(width, height, text, align=align, new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def heading(text: str) -> None:
        pdf.ln(2)
        line(text, size=12, height=7)
        pdf.line(pdf.l_margin, pdf.get_y(), pdf.l_margin + width, pdf.get_y())
        pdf.ln(1)

    line(sheet.hospital, size=15, height=8, align="C")
    line(sheet.title, size=14, height=8, align="C")
    if sheet.title_en:
        line(sheet.title_en, size=10, height=5, align="C")
    if sheet.status:
        line(sheet.status, size=10, height=6, align="C")
    pdf.ln(2)
    line(f"申请单位 Requesting clinic: {sheet.clinic}")
    for label, value in sheet.patient:
        line(f"{label}: {value}")
    if sheet.critical:
        heading("危急值 Critical result")
        for text in sheet.critical:
            line(text)
    if sheet.fields:
        heading("检查项目 Structured findings")
        for label, value in sheet.fields:
            line(f"{label}: {value}")
    heading("检查所见 Findings")
    line(sheet.findings or "—")
    heading("诊断印象 Impression")
    line(sheet.impression or "—")
    pdf.ln(3)
    line(sheet.signed)
    if sheet.second_reading:
        line(sheet.second_reading)
    for signed, text in sheet.addenda:
        heading("补充报告 Addendum")
        line(text)
        line(signed)
    return bytes(pdf.output())
