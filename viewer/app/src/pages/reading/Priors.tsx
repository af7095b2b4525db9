// The patient's earlier studies, one click from the case: choosing one opens it beside the
// current images for comparison.
import { useEffect, useState } from "preact/hooks";
import { ApiError, api } from "../../api";
import { defineMessages, formatDicomDate } from "../../i18n";

const t = defineMessages(
  {
    title: "既往检查",
    none: "该患者没有既往检查",
    compare: "对比",
    close: "关闭对比",
    images: "{series} 个序列，{instances} 幅图像",
    failed: "加载失败：{detail}",
  },
  {
    title: "Prior studies",
    none: "No earlier studies of this patient",
    compare: "Compare",
    close: "Close comparison",
    images: "{series} series, {instances} images",
    failed: "Could not load: {detail}",
  },
);

export interface PriorStudy {
  study_instance_uid: string;
  study_date: string;
  study_time: string;
  study_description: string;
  modalities: string[];
  num_series: number;
  num_instances: number;
  institution_name: string;
  case_id: number | null;
}

export interface PriorsProps {
  caseId: number;
  open: string | null; // the Study Instance UID shown beside, if any
  onOpen: (study: PriorStudy | null) => void;
}

export function Priors({ caseId, open, onOpen }: PriorsProps) {
  const [priors, setPriors] = useState<PriorStudy[] | null>(null);
  const [error, setError] = useState("");

  useEffect(() => {
    api<PriorStudy[]>(`/api/cases/${caseId}/priors`)
      .then(setPriors)
      .catch((e: unknown) =>
        setError(t("failed", { detail: e instanceof ApiError ? e.detail : String(e) })),
      );
  }, [caseId]);

  return (
    <section class="priors panel" data-testid="priors" aria-label={t("title")}>
      <h3>{t("title")}</h3>
      {error && <p class="error">{error}</p>}
      {priors !== null && priors.length === 0 && <p class="muted">{t("none")}</p>}
      <ul>
        {(priors ?? []).map((p) => (
          <li class={open === p.study_instance_uid ? "current" : ""}>
            <div class="prior-text">
              <strong>{formatDicomDate(p.study_date)}</strong> {p.modalities.join(" / ")}{" "}
              <span>{p.study_description}</span>
              <span class="muted prior-meta">
                {p.institution_name} ·{" "}
                {t("images", { series: p.num_series, instances: p.num_instances })}
              </span>
            </div>
            {open === p.study_instance_uid ? (
              <button type="button" onClick={() => onOpen(null)}>
                {t("close")}
              </button>
            ) : (
              <button type="button" onClick={() => onOpen(p)}>
                {t("compare")}
              </button>
            )}
          </li>
        ))}
      </ul>
    </section>
  );
}
