// Reading one case: the request at the top, the images (or the ECG) beside the report, the
// patient's earlier studies one click away. Opening a free case claims it; the lease is
// renewed while the page is open and given back by "release".
import { useEffect, useRef, useState } from "preact/hooks";
import { useLocation, useRoute } from "preact-iso";
import { ApiError, api } from "../../api";
import { defineMessages, formatDateTime, formatDicomDate } from "../../i18n";
import { can, me } from "../../session";
import { EcgViewer } from "../../viewers/ecg/EcgViewer";
import { ImageViewer } from "../../viewers/image/ImageViewer";
import {
  type CaseOut,
  type ClaimOut,
  ageLabel,
  deadline,
  isEcgCase,
  now,
  personName,
  priorityLabel,
  sexLabel,
  startTicking,
  statusLabel,
} from "../worklist/cases";
import { type PriorStudy, Priors } from "./Priors";
import { ReportEditor } from "./ReportEditor";
import "./reading.css";

const t = defineMessages(
  {
    back: "返回工作列表",
    history: "临床病史",
    question: "临床问题",
    noText: "（未填写）",
    study: "检查",
    clinic: "申请机构",
    requested: "申请时间",
    priors: "既往检查（{n}）",
    release: "释放病例",
    claimedByOther: "此病例正由 {user} 阅片，只能查看",
    claimFailed: "认领失败：{detail}",
    leaseLost: "认领已失效：{detail}",
    notFound: "病例不存在或无权查看",
    loading: "正在加载…",
    noEcg: "该检查中没有心电图波形",
    signedDone: "报告已签发。",
    leave: "报告有未保存的修改，确定离开吗？",
    prior: "既往：{date}",
    triaged: "心电分诊：{reason}",
    current: "本次检查",
  },
  {
    back: "Back to worklist",
    history: "Clinical history",
    question: "Question",
    noText: "(none given)",
    study: "Study",
    clinic: "Clinic",
    requested: "Requested",
    priors: "Prior studies ({n})",
    release: "Release case",
    claimedByOther: "{user} is reading this case; you can only look",
    claimFailed: "Could not claim: {detail}",
    leaseLost: "Your claim lapsed: {detail}",
    notFound: "No such case, or not yours to see",
    loading: "Loading…",
    noEcg: "This study holds no ECG waveform",
    signedDone: "The report is signed.",
    leave: "The report has unsaved changes. Leave anyway?",
    prior: "Prior: {date}",
    triaged: "ECG triage: {reason}",
    current: "This study",
  },
);

const CLAIMABLE = new Set(["queued", "claimed", "reported"]);
const ECG_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.9."; // PS3.4 Annex B: waveform storage classes
const detailOf = (e: unknown): string => (e instanceof ApiError ? e.detail : String(e));

type DicomJson = Record<string, { Value?: unknown[] }>;

/** The first waveform instance of the study (QIDO-RS), which the ECG viewer draws. */
async function findEcgInstance(studyUid: string): Promise<string | null> {
  const found = await api<DicomJson[]>(
    `/dicomweb/studies/${encodeURIComponent(studyUid)}/instances?includefield=00080016`,
    { headers: { accept: "application/dicom+json" } },
  );
  for (const ds of found ?? []) {
    const sopClass = String(ds["00080016"]?.Value?.[0] ?? "");
    if (sopClass.startsWith(ECG_SOP_PREFIX)) return String(ds["00080018"]?.Value?.[0] ?? "");
  }
  return null;
}

function RequestHeader({ item }: { item: CaseOut }) {
  const d = deadline(item, now.value);
  const sexAge = [sexLabel(item.patient_sex), ageLabel(item.patient_birth_date, item.study_date)]
    .filter(Boolean)
    .join(" · ");
  const open = item.status !== "signed" && item.status !== "cancelled";
  return (
    <section class="request panel" data-testid="request">
      <div class="request-line">
        <span class={`badge priority priority-${item.priority}`}>{priorityLabel(item.priority)}</span>
        <strong class="patient-name">{personName(item.patient_name) || item.patient_id}</strong>
        <span class="muted">
          {sexAge} {item.patient_id}
        </span>
        <span>
          {item.modalities.join(" / ")} {item.study_description}{" "}
          <span class="muted">{formatDicomDate(item.study_date)}</span>
        </span>
        <span>
          {t("clinic")}: {item.institution_name}
        </span>
        <span class="muted">
          {t("requested")}: {formatDateTime(item.created_at)}
        </span>
        {open ? (
          <span class={`deadline deadline-${d.state}`} data-state={d.state}>
            {d.text}
          </span>
        ) : (
          <span class="badge">{statusLabel(item.status)}</span>
        )}
      </div>
      {item.triage_reason && <p class="triage-reason">{t("triaged", { reason: item.triage_reason })}</p>}
      <dl class="request-text">
        <dt>{t("question")}</dt>
        <dd data-testid="question">{item.question || t("noText")}</dd>
        <dt>{t("history")}</dt>
        <dd data-testid="clinical-history">{item.clinical_history || t("noText")}</dd>
      </dl>
    </section>
  );
}

/** An earlier study beside the current one: its ECG when it holds one, else its images. */
function PriorViewer({ prior }: { prior: PriorStudy }) {
  const ecg = prior.modalities.includes("ECG");
  const [sop, setSop] = useState<string | null | undefined>(undefined);
  useEffect(() => {
    if (!ecg) return;
    findEcgInstance(prior.study_instance_uid)
      .then(setSop)
      .catch(() => setSop(null));
  }, [prior.study_instance_uid]);
  if (!ecg) return <ImageViewer studyInstanceUid={prior.study_instance_uid} />;
  if (sop) return <EcgViewer sopInstanceUid={sop} />;
  return <p class="muted">{sop === null ? t("noEcg") : t("loading")}</p>;
}

export function Workspace() {
  const { params } = useRoute();
  const { route } = useLocation();
  const caseId = Number(params.caseId);
  const [item, setItem] = useState<CaseOut | null>(null);
  const [error, setError] = useState("");
  const [notice, setNotice] = useState("");
  const [claim, setClaim] = useState<ClaimOut | null>(null);
  const [ecgSop, setEcgSop] = useState<string | null | undefined>(undefined);
  const [showPriors, setShowPriors] = useState(false);
  const [prior, setPrior] = useState<PriorStudy | null>(null);
  const [signed, setSigned] = useState(false);
  const dirty = useRef(false);
  const user = me.value?.username ?? "";

  useEffect(() => startTicking(), []);

  async function load(): Promise<CaseOut | null> {
    try {
      const found = await api<CaseOut>(`/api/cases/${caseId}`);
      setItem(found);
      return found;
    } catch (e) {
      setError(e instanceof ApiError && e.status === 404 ? t("notFound") : detailOf(e));
      return null;
    }
  }

  // Open: load, and claim a free case (or renew one's own claim: claiming again renews).
  useEffect(() => {
    let live = true;
    void (async () => {
      const found = await load();
      if (!live || !found) return;
      const free = found.claim_holder === null || found.claim_holder === user;
      if (CLAIMABLE.has(found.status) && free && can("claim_cases")) {
        try {
          const taken = await api<ClaimOut>(`/api/cases/${caseId}/claim`, { method: "POST" });
          if (!live) return;
          setClaim(taken);
          await load();
        } catch (e) {
          if (live) setNotice(t("claimFailed", { detail: detailOf(e) }));
        }
      }
    })();
    return () => {
      live = false;
    };
  }, [caseId]);

  // Renew the lease at half its length, so a reader who stays never loses the case.
  useEffect(() => {
    if (!claim) return;
    const length = Date.parse(claim.lease_expires_at) - Date.parse(claim.claimed_at);
    const every = Math.max(10_000, length / 2);
    const timer = window.setInterval(() => {
      api<ClaimOut>(`/api/cases/${caseId}/renew`, { body: { lease_token: claim.lease_token } })
        .then((renewed) => setClaim({ ...claim, lease_expires_at: renewed.lease_expires_at }))
        .catch((e: unknown) => {
          setNotice(t("leaseLost", { detail: detailOf(e) }));
          setClaim(null);
        });
    }, every);
    return () => window.clearInterval(timer);
  }, [claim?.lease_token]);

  useEffect(() => {
    if (!item) return;
    if (!isEcgCase(item)) {
      setEcgSop(undefined);
      return;
    }
    findEcgInstance(item.study_instance_uid)
      .then(setEcgSop)
      .catch(() => setEcgSop(null));
  }, [item?.study_instance_uid, item?.service]);

  // Unsaved changes: the browser asks on reload/close; in-app links ask here first.
  useEffect(() => {
    const beforeUnload = (event: BeforeUnloadEvent) => {
      if (!dirty.current) return;
      event.preventDefault();
      event.returnValue = "";
    };
    const onClick = (event: MouseEvent) => {
      if (!dirty.current) return;
      const link = (event.target as Element | null)?.closest?.("a[href]");
      if (!link || (link as HTMLAnchorElement).target === "_blank") return;
      if (!window.confirm(t("leave"))) {
        event.preventDefault();
        event.stopImmediatePropagation();
      } else {
        dirty.current = false;
      }
    };
    window.addEventListener("beforeunload", beforeUnload);
    window.addEventListener("click", onClick, true);
    return () => {
      window.removeEventListener("beforeunload", beforeUnload);
      window.removeEventListener("click", onClick, true);
    };
  }, []);

  async function release(): Promise<void> {
    if (dirty.current && !window.confirm(t("leave"))) return;
    try {
      await api(`/api/cases/${caseId}/release`, {
        body: claim ? { lease_token: claim.lease_token } : {},
      });
      dirty.current = false;
      setClaim(null);
      route("/app/worklist");
    } catch (e) {
      setNotice(detailOf(e));
    }
  }

  if (error) {
    return (
      <section class="workspace">
        <p class="error" role="alert">
          {error}
        </p>
        <a href="/app/worklist">{t("back")}</a>
      </section>
    );
  }
  if (!item) return <p class="loading-text" aria-busy="true">{t("loading")}</p>;

  const ecg = isEcgCase(item);
  const heldByOther = item.claim_holder !== null && item.claim_holder !== user;
  return (
    <section class="workspace">
      <nav class="workspace-bar">
        <a href="/app/worklist">← {t("back")}</a>
        {item.prior_studies > 0 || showPriors ? (
          <button
            type="button"
            aria-expanded={showPriors}
            data-testid="priors-toggle"
            onClick={() => setShowPriors(!showPriors)}
          >
            {t("priors", { n: item.prior_studies })}
          </button>
        ) : null}
        {claim && (
          <button type="button" onClick={() => void release()}>
            {t("release")}
          </button>
        )}
      </nav>
      <RequestHeader item={item} />
      {notice && (
        <p class="error" role="alert">
          {notice}
        </p>
      )}
      {heldByOther && <p class="muted">{t("claimedByOther", { user: item.claim_holder ?? "" })}</p>}
      {signed && <p class="ok" role="status">{t("signedDone")}</p>}
      {showPriors && <Priors caseId={item.id} open={prior?.study_instance_uid ?? null} onOpen={setPrior} />}

      <div class={`reading-grid ${prior ? "with-prior" : ""}`}>
        <div class="viewers">
          <div
            class="viewer-pane"
            data-testid="case-viewer"
            data-kind={ecg ? "ecg" : "image"}
            data-sop={ecg && ecgSop ? ecgSop : undefined}
          >
            {prior && <h3 class="pane-title">{t("current")}</h3>}
            {ecg ? (
              ecgSop ? (
                <EcgViewer sopInstanceUid={ecgSop} />
              ) : ecgSop === null ? (
                <p class="muted">{t("noEcg")}</p>
              ) : (
                <p class="loading-text">{t("loading")}</p>
              )
            ) : (
              <ImageViewer studyInstanceUid={item.study_instance_uid} />
            )}
          </div>
          {prior && (
            <div class="viewer-pane" data-testid="prior-viewer" data-study={prior.study_instance_uid}>
              <h3 class="pane-title">{t("prior", { date: formatDicomDate(prior.study_date) })}</h3>
              <PriorViewer prior={prior} />
            </div>
          )}
        </div>
        <ReportEditor
          key={`${item.id}-${item.status}`}
          item={item}
          leaseToken={claim && !heldByOther ? claim.lease_token : null}
          onDirty={(value) => (dirty.current = value)}
          onSigned={() => {
            dirty.current = false;
            setSigned(true);
            setClaim(null);
            void load();
          }}
        />
      </div>
    </section>
  );
}
