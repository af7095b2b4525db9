// The hub's shapes the clinic desk reads (telehealth/cases/schemas.py, reports/schemas.py)
// and the words for their coded values, in both languages.
import { defineMessages } from "../../i18n";

export type Priority = "stat" | "urgent" | "routine";
export type Service = "imaging" | "ecg" | "ultrasound" | "other";
export type CaseStatus = "new" | "queued" | "claimed" | "reported" | "signed" | "cancelled";

export const PRIORITIES: Priority[] = ["routine", "urgent", "stat"];
export const SERVICES: Service[] = ["imaging", "ecg", "ultrasound", "other"];

export interface CaseOut {
  id: number;
  status: CaseStatus;
  priority: Priority;
  triage_reason: string | null;
  service: Service;
  origin: "request" | "auto";
  study_instance_uid: string;
  patient_id: string;
  patient_name: string;
  patient_sex: string;
  study_date: string;
  study_description: string;
  modalities: string[];
  institution_name: string;
  clinical_history: string;
  question: string;
  group_code: string | null;
  claim_holder: string | null;
  due_at: string;
  overdue: boolean;
  created_at: string;
  updated_at: string;
  closed_at: string | null;
}

export interface CaseList {
  total: number;
  items: CaseOut[];
}

export interface CaseEventOut {
  id: number;
  at: string;
  kind: string;
  actor: string;
  detail: Record<string, unknown>;
}

export interface CriticalOut {
  id: number;
  case_id: number;
  category: string;
  note: string;
  status: "open" | "acknowledged";
  flagged_at: string;
  acknowledged_at: string | null;
  acknowledge_method: string | null;
  acknowledge_note: string;
}

export interface TemplateField {
  key: string;
  label: string;
  label_en: string;
  type: string;
  unit: string;
}

export interface ReportOut {
  id: number;
  status: "draft" | "preliminary" | "signed";
  title: string;
  title_en: string;
  fields: TemplateField[];
  values: Record<string, unknown>;
  findings: string;
  impression: string;
  author: string | null;
  signed_by: string | null;
  signed_at: string | null;
  preliminary_at: string | null;
  addenda: { id: number; text: string; signed_by: string | null; signed_at: string }[];
  critical_results: CriticalOut[];
  documents: { sop_instance_uid: string }[];
}

export const words = defineMessages(
  {
    "priority.stat": "急诊",
    "priority.urgent": "加急",
    "priority.routine": "常规",
    "service.imaging": "影像",
    "service.ecg": "心电",
    "service.ultrasound": "超声",
    "service.other": "其他",
    "status.new": "待分配",
    "status.queued": "排队中",
    "status.claimed": "阅片中",
    "status.reported": "初步报告",
    "status.signed": "已出报告",
    "status.cancelled": "已取消",
    "critical.intracranial_hemorrhage": "颅内出血",
    "critical.cerebral_herniation": "脑疝",
    "critical.tension_pneumothorax": "张力性气胸",
    "critical.pulmonary_embolism": "肺栓塞",
    "critical.aortic_dissection": "主动脉夹层",
    "critical.visceral_perforation": "空腔脏器穿孔",
    "critical.organ_rupture": "实质脏器破裂出血",
    "critical.ectopic_pregnancy": "异位妊娠破裂",
    "critical.acute_mi": "急性心肌梗死",
    "critical.malignant_arrhythmia": "恶性心律失常",
    "critical.severe_bradycardia": "严重心动过缓",
    "critical.other": "其他危急值",
    "ack.phone": "电话回读",
    "ack.in_person": "当面告知",
    "ack.system": "系统内确认",
  },
  {
    "priority.stat": "STAT",
    "priority.urgent": "Urgent",
    "priority.routine": "Routine",
    "service.imaging": "Imaging",
    "service.ecg": "ECG",
    "service.ultrasound": "Ultrasound",
    "service.other": "Other",
    "status.new": "Unassigned",
    "status.queued": "Queued",
    "status.claimed": "Being read",
    "status.reported": "Preliminary report",
    "status.signed": "Report signed",
    "status.cancelled": "Cancelled",
    "critical.intracranial_hemorrhage": "Intracranial haemorrhage",
    "critical.cerebral_herniation": "Cerebral herniation",
    "critical.tension_pneumothorax": "Tension pneumothorax",
    "critical.pulmonary_embolism": "Pulmonary embolism",
    "critical.aortic_dissection": "Aortic dissection",
    "critical.visceral_perforation": "Visceral perforation",
    "critical.organ_rupture": "Solid organ rupture",
    "critical.ectopic_pregnancy": "Ruptured ectopic pregnancy",
    "critical.acute_mi": "Acute myocardial infarction",
    "critical.malignant_arrhythmia": "Malignant arrhythmia",
    "critical.severe_bradycardia": "Severe bradycardia",
    "critical.other": "Other critical result",
    "ack.phone": "Phone readback",
    "ack.in_person": "In person",
    "ack.system": "Confirmed in the hub",
  },
);

type WordKey = Parameters<typeof words>[0];

/** The word for a coded value, or the code itself when the hub has a newer one. */
export function word(prefix: string, code: string): string {
  const key = `${prefix}.${code}` as WordKey;
  const text = words(key);
  return text === key ? code : text;
}

/** A DICOM person name for display ("Zhang^San" → "Zhang San"). */
export function personName(pn: string): string {
  return pn
    .split("=")
    .map((group) => group.split("^").filter(Boolean).join(" "))
    .filter(Boolean)
    .join(" / ");
}
