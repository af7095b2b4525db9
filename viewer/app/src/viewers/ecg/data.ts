// What the viewer loads: the calibrated samples (int16 with a µV scale per lead, the fastest
// path to the first trace; on /app/ecg/:sop already asked for by the shell, see prefetch.ts),
// the hub's measurements, and the patient/acquisition header with the cart's own statements
// from the instance's DICOM metadata. Each is fetched on its own so the traces never wait
// for the others.
import { api, apiError } from "../../api";
import { takePrefetched } from "../../prefetch";
import type { EcgSignals } from "./paper";
import { samplesPath } from "./prefetch";

export async function fetchSignals(sop: string, signal?: AbortSignal): Promise<EcgSignals> {
  const path = samplesPath(sop);
  const response =
    (await takePrefetched(path)) ??
    (await fetch(path, { credentials: "same-origin", headers: { accept: "application/octet-stream" }, signal }));
  if (!response.ok) throw await apiError(response);
  const names = (response.headers.get("X-ECG-Leads") ?? "").split(",").filter(Boolean);
  const scales = (response.headers.get("X-ECG-Scale") ?? "").split(",").map(Number);
  const samplingHz = Number(response.headers.get("X-ECG-Sampling-Frequency"));
  const numSamples = Number(response.headers.get("X-ECG-Samples"));
  const buffer = await response.arrayBuffer();
  signal?.throwIfAborted();
  // Little-endian int16 like every browser this runs on; µV = count × the lead's scale.
  const counts = new Int16Array(buffer);
  const all = new Float32Array(counts.length);
  const leads = names.map((_, i) => {
    const scale = scales[i];
    const lead = all.subarray(i * numSamples, (i + 1) * numSamples);
    for (let k = 0, at = i * numSamples; k < numSamples; k++) lead[k] = counts[at + k] * scale;
    return lead;
  });
  return { names, samplingHz, numSamples, leads };
}

export interface LeadAmplitudes {
  p_uv: number | null;
  q_uv: number | null;
  r_uv: number | null;
  s_uv: number | null;
  t_uv: number | null;
  st_uv: number | null;
}

export interface MeasuredValues {
  heart_rate_bpm?: number | null;
  rr_mean_ms?: number | null;
  rhythm_regular?: boolean | null;
  pr_ms?: number | null;
  qrs_ms?: number | null;
  qt_ms?: number | null;
  qtc_bazett_ms?: number | null;
  qtc_fridericia_ms?: number | null;
  frontal_axis_deg?: number | null;
  leads?: Record<string, LeadAmplitudes>;
  not_computable?: Record<string, string>;
  [name: string]: unknown;
}

export interface TriageReason {
  code: string;
  priority: "stat" | "urgent";
  message: string;
  value: number | null;
  threshold: number | null;
}

export interface Measurements {
  sop_instance_uid: string;
  study_instance_uid: string;
  status: string;
  error: string;
  algorithm: string;
  computed_at: string;
  automatic: MeasuredValues;
  reader: { values: Record<string, unknown>; comment: string; by: string | null; at: string | null } | null;
  effective: MeasuredValues;
  triage: TriageReason[];
}

export function fetchMeasurements(sop: string, signal?: AbortSignal): Promise<Measurements> {
  return api<Measurements>(`/api/ecg/${encodeURIComponent(sop)}/measurements`, { signal });
}

/** Patient and acquisition as the cart wrote them, and its interpretation statements. */
export interface EcgHeader {
  patientName: string;
  patientId: string;
  birthDate: string;
  sex: string;
  acquired: string; // DICOM DT (or DA + TM)
  institution: string;
  device: string;
  statements: string[];
  cartValues: { name: string; value: string }[]; // the cart's own measurements, if it sent any
}

type DicomJson = Record<string, { vr: string; Value?: unknown[] }>;

function text(ds: DicomJson, tag: string): string {
  const value = ds[tag]?.Value?.[0];
  if (value === undefined || value === null) return "";
  if (typeof value === "object" && "Alphabetic" in (value as object)) {
    // Person name: components joined by spaces (Family^Given → "Family Given").
    return String((value as { Alphabetic: string }).Alphabetic)
      .split("^")
      .filter(Boolean)
      .join(" ");
  }
  return String(value);
}

function codeMeaning(item: DicomJson, tag: string): string {
  const code = item[tag]?.Value?.[0] as DicomJson | undefined;
  return code ? text(code, "00080104") : "";
}

export function parseHeader(ds: DicomJson): EcgHeader {
  const statements: string[] = [];
  const cartValues: { name: string; value: string }[] = [];
  for (const item of (ds["0040B020"]?.Value ?? []) as DicomJson[]) {
    const free = text(item, "00700006"); // Unformatted Text Value
    if (free) {
      statements.push(free);
      continue;
    }
    const concept = codeMeaning(item, "0040A043");
    const numeric = item["0040A30A"]?.Value?.[0];
    // Numeric annotations without sample positions are the cart's global measurements.
    if (concept && numeric !== undefined && !item["0040A132"]) {
      const unit = codeMeaning(item, "004008EA");
      const unitCode = (item["004008EA"]?.Value?.[0] as DicomJson | undefined)?.["00080100"]?.Value?.[0];
      cartValues.push({ name: concept, value: `${numeric} ${unitCode ?? unit}`.trim() });
    } else if (concept && !item["0040A132"] && !numeric) {
      statements.push(concept);
    }
  }
  const acquired =
    text(ds, "0008002A") || `${text(ds, "00080022") || text(ds, "00080020")}${text(ds, "00080032") || text(ds, "00080030")}`;
  const device = [text(ds, "00080070"), text(ds, "00081090")].filter(Boolean).join(" ");
  return {
    patientName: text(ds, "00100010"),
    patientId: text(ds, "00100020"),
    birthDate: text(ds, "00100030"),
    sex: text(ds, "00100040"),
    acquired,
    institution: text(ds, "00080080"),
    device,
    statements,
    cartValues,
  };
}

export async function fetchHeader(sop: string, signal?: AbortSignal): Promise<EcgHeader | null> {
  const found = await api<DicomJson[]>(`/dicomweb/instances?SOPInstanceUID=${encodeURIComponent(sop)}`, {
    signal,
    headers: { accept: "application/dicom+json" },
  });
  if (!found.length) return null;
  const study = text(found[0], "0020000D");
  const series = text(found[0], "0020000E");
  const metadata = await api<DicomJson[]>(
    `/dicomweb/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}/metadata`,
    { signal, headers: { accept: "application/dicom+json" } },
  );
  const ds = metadata.find((m) => text(m, "00080018") === sop) ?? metadata[0];
  return ds ? parseHeader(ds) : null;
}

/** DICOM DT/DA+TM "YYYYMMDDHHMMSS…" → "YYYY-MM-DD HH:MM:SS" (as the cart's local time). */
export function formatDicomDateTime(dt: string): string {
  if (dt.length < 8) return dt;
  const date = `${dt.slice(0, 4)}-${dt.slice(4, 6)}-${dt.slice(6, 8)}`;
  if (dt.length < 12) return date;
  const seconds = dt.length >= 14 ? `:${dt.slice(12, 14)}` : "";
  return `${date} ${dt.slice(8, 10)}:${dt.slice(10, 12)}${seconds}`;
}
