// Pick a study (files, a folder, ZIPs; drag and drop or the buttons), check whose it is from
// the headers, send it, then fill the reading request once it is on the hub.
import { useRef, useState } from "preact/hooks";
import { defineMessages, formatDicomDate } from "../../i18n";
import { personName } from "./model";
import { RequestForm } from "./RequestForm";
import { type UploadItem, Uploader } from "./upload";

const t = defineMessages(
  {
    title: "上传检查",
    drop: "将 DICOM 文件、文件夹或 ZIP 压缩包拖到这里",
    or: "或",
    pickFiles: "选择文件",
    pickFolder: "选择文件夹",
    reading: "正在读取文件头…",
    startAll: "开始上传",
    clear: "清除已完成",
    remove: "移除",
    retry: "重试",
    retryFailed: "重试失败文件",
    patient: "患者",
    patientId: "患者编号",
    studyDate: "检查日期",
    modality: "检查类型",
    description: "检查描述",
    unknownStudy: "（无法识别的检查）",
    files: "{n} 个文件 · {size}",
    progress: "已上传 {done}/{total}",
    failedCount: "{n} 个失败",
    overall: "总进度",
    offline: "网络已断开，恢复后自动继续上传（已上传的文件不会重传）",
    waiting: "连接中断，稍后自动重试…",
    sending: "正在上传…",
    done: "上传完成",
    checkPatient: "上传前请核对患者信息",
    "state.reading": "读取中",
    "state.invalid": "不是 DICOM 文件",
    "state.skipped": "已跳过",
    "state.ready": "待上传",
    "state.pending": "排队中",
    "state.sending": "上传中",
    "state.stored": "已上传",
    "state.failed": "失败",
    alreadyThere: "平台已有，未重传",
    "reason.not-dicom": "不是 DICOM 文件，未上传",
    "reason.dicomdir": "DICOMDIR 目录文件，无需上传",
    "reason.duplicate": "与另一文件是同一影像，只上传一次",
    hubSaid: "平台拒收：{reason}",
    problems: "未上传的文件",
    fileName: "文件",
    size: "大小",
    state: "状态",
  },
  {
    title: "Upload a study",
    drop: "Drop DICOM files, a folder or ZIP archives here",
    or: "or",
    pickFiles: "Choose files",
    pickFolder: "Choose a folder",
    reading: "Reading file headers…",
    startAll: "Start upload",
    clear: "Clear finished",
    remove: "Remove",
    retry: "Retry",
    retryFailed: "Retry failed files",
    patient: "Patient",
    patientId: "Patient ID",
    studyDate: "Study date",
    modality: "Modality",
    description: "Description",
    unknownStudy: "(unrecognised study)",
    files: "{n} files · {size}",
    progress: "{done}/{total} uploaded",
    failedCount: "{n} failed",
    overall: "Overall",
    offline: "Offline: the upload resumes by itself when the link is back (files already sent are not sent again)",
    waiting: "Connection lost, retrying shortly…",
    sending: "Uploading…",
    done: "Upload complete",
    checkPatient: "Check the patient before sending",
    "state.reading": "Reading",
    "state.invalid": "Not DICOM",
    "state.skipped": "Skipped",
    "state.ready": "Ready",
    "state.pending": "Queued",
    "state.sending": "Sending",
    "state.stored": "Uploaded",
    "state.failed": "Failed",
    alreadyThere: "already on the hub, not sent again",
    "reason.not-dicom": "Not a DICOM file; not uploaded",
    "reason.dicomdir": "DICOMDIR index file; nothing to upload",
    "reason.duplicate": "Same image as another file; sent once",
    hubSaid: "Refused by the hub: {reason}",
    problems: "Files not uploaded",
    fileName: "File",
    size: "Size",
    state: "State",
  },
);

/** One uploader for the page's lifetime: an upload goes on while the technician looks at a case. */
export const uploader = new Uploader();

export function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

interface StudyGroup {
  uid: string;
  items: UploadItem[];
}

function groups(items: UploadItem[]): StudyGroup[] {
  const byStudy = new Map<string, UploadItem[]>();
  for (const item of items) {
    if (item.state === "invalid" || item.state === "skipped" || !item.header) continue;
    const uid = item.header.studyInstanceUid;
    byStudy.set(uid, [...(byStudy.get(uid) ?? []), item]);
  }
  return [...byStudy].map(([uid, list]) => ({ uid, items: list }));
}

function reasonText(item: UploadItem): string {
  if (item.state === "invalid" || item.state === "skipped") {
    const key = `reason.${item.reason}` as Parameters<typeof t>[0];
    const text = t(key);
    return text === key ? item.reason : text;
  }
  if (item.state === "failed") {
    const code = item.code === null ? "" : ` (0x${item.code.toString(16).toUpperCase().padStart(4, "0")})`;
    return t("hubSaid", { reason: `${item.reason}${code}` });
  }
  if (item.alreadyThere) return t("alreadyThere");
  return "";
}

// --- picking: inputs and drag and drop -------------------------------------------------------

interface Picked {
  file: File;
  path: string;
}

function readEntries(reader: FileSystemDirectoryReader): Promise<FileSystemEntry[]> {
  return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

async function walk(entry: FileSystemEntry, out: Picked[]): Promise<void> {
  if (entry.isFile) {
    const file = await new Promise<File>((resolve, reject) =>
      (entry as FileSystemFileEntry).file(resolve, reject),
    );
    out.push({ file, path: entry.fullPath.replace(/^\//, "") });
  } else if (entry.isDirectory) {
    const reader = (entry as FileSystemDirectoryEntry).createReader();
    // readEntries answers in chunks (100 in Chromium) until an empty one.
    for (let chunk = await readEntries(reader); chunk.length; chunk = await readEntries(reader)) {
      for (const child of chunk) await walk(child, out);
    }
  }
}

async function dropped(transfer: DataTransfer): Promise<Picked[]> {
  // Entries must be taken before the first await: the DataTransfer empties after the event.
  const entries = Array.from(transfer.items)
    .map((item) => item.webkitGetAsEntry?.())
    .filter((e): e is FileSystemEntry => !!e);
  if (!entries.length) return Array.from(transfer.files, (file) => ({ file, path: file.name }));
  const out: Picked[] = [];
  for (const entry of entries) await walk(entry, out);
  return out;
}

function DropZone() {
  const files = useRef<HTMLInputElement>(null);
  const folder = useRef<HTMLInputElement>(null);
  const [over, setOver] = useState(false);

  function picked(input: HTMLInputElement) {
    const list = Array.from(input.files ?? [], (file) => ({ file, path: file.webkitRelativePath || file.name }));
    input.value = ""; // the same files may be picked again
    void uploader.add(list);
  }

  return (
    <div
      class={`dropzone${over ? " over" : ""}`}
      data-testid="dropzone"
      onDragOver={(e) => {
        e.preventDefault();
        setOver(true);
      }}
      onDragLeave={() => setOver(false)}
      onDrop={(e) => {
        e.preventDefault();
        setOver(false);
        if (e.dataTransfer) void dropped(e.dataTransfer).then((list) => uploader.add(list));
      }}
    >
      <p>{t("drop")}</p>
      <p class="muted">{t("or")}</p>
      <div class="dropzone-buttons">
        <button type="button" onClick={() => files.current?.click()}>
          {t("pickFiles")}
        </button>
        <button type="button" onClick={() => folder.current?.click()}>
          {t("pickFolder")}
        </button>
      </div>
      <input
        ref={files}
        type="file"
        multiple
        hidden
        data-testid="pick-files"
        onChange={(e) => picked(e.currentTarget)}
      />
      <input
        ref={(el) => {
          folder.current = el;
          if (el) el.webkitdirectory = true;
        }}
        type="file"
        hidden
        data-testid="pick-folder"
        onChange={(e) => picked(e.currentTarget)}
      />
    </div>
  );
}

// --- the picked studies ------------------------------------------------------------------------

function Progress({ value, max, label }: { value: number; max: number; label: string }) {
  const percent = max > 0 ? Math.round((value / max) * 100) : 0;
  return (
    <div class="progress" role="progressbar" aria-label={label} aria-valuemin={0} aria-valuemax={100} aria-valuenow={percent}>
      <div class="progress-bar" style={{ width: `${percent}%` }} />
    </div>
  );
}

function FileRow({ item }: { item: UploadItem }) {
  // Items change in place: read the tick, or @preact/signals skips a row whose props are equal.
  void uploader.tick.value;
  return (
    <tr class={`file-row file-${item.state}`} data-testid="file-row" data-state={item.state}>
      <td class="file-name">{item.name}</td>
      <td class="file-size">{formatSize(item.size)}</td>
      <td class="file-progress">
        <Progress value={item.state === "stored" ? item.size : item.sent} max={item.size} label={item.name} />
      </td>
      <td class="file-state">
        <span>{t(`state.${item.state}`)}</span>
        {reasonText(item) && <span class="file-reason">{reasonText(item)}</span>}
      </td>
      <td class="file-actions">
        {item.state === "failed" && (
          <button type="button" onClick={() => void uploader.start((i) => i === item, true)}>
            {t("retry")}
          </button>
        )}
      </td>
    </tr>
  );
}

function StudyCard({ group }: { group: StudyGroup }) {
  void uploader.tick.value;
  const header = group.items[0].header!;
  const counts = uploader.counts(group.items);
  const total = group.items.length;
  const modalities = [...new Set(group.items.map((i) => i.header?.modality).filter(Boolean))].join(", ");
  const finished = counts.stored > 0 && counts.pending + counts.sending + counts.ready + counts.reading === 0;
  const showFiles = total <= 12 || counts.failed > 0;
  return (
    <article class="study-card panel" data-testid="study-card" data-study={group.uid}>
      <dl class="study-facts">
        <div class="fact-patient">
          <dt>{t("patient")}</dt>
          <dd data-testid="study-patient">{personName(header.patientName) || "—"}</dd>
        </div>
        <div>
          <dt>{t("patientId")}</dt>
          <dd>{header.patientId || "—"}</dd>
        </div>
        <div>
          <dt>{t("studyDate")}</dt>
          <dd>{formatDicomDate(header.studyDate) || "—"}</dd>
        </div>
        <div>
          <dt>{t("modality")}</dt>
          <dd data-testid="study-modality">{modalities || "—"}</dd>
        </div>
        <div class="fact-description">
          <dt>{t("description")}</dt>
          <dd>{header.studyDescription || (group.uid ? "—" : t("unknownStudy"))}</dd>
        </div>
      </dl>
      <div class="study-status">
        <span>{t("files", { n: total, size: formatSize(counts.bytes) })}</span>
        <span data-testid="study-progress">{t("progress", { done: counts.stored, total })}</span>
        {counts.failed > 0 && <span class="error">{t("failedCount", { n: counts.failed })}</span>}
      </div>
      <Progress value={counts.sentBytes} max={counts.bytes} label={t("overall")} />
      <div class="study-actions">
        {counts.failed > 0 && (
          <button type="button" onClick={() => void uploader.start((i) => group.items.includes(i), true)}>
            {t("retryFailed")}
          </button>
        )}
        {counts.sending + counts.pending === 0 && !finished && (
          <button type="button" onClick={() => uploader.remove((i) => group.items.includes(i))}>
            {t("remove")}
          </button>
        )}
      </div>
      <details open={showFiles}>
        <summary>{t("files", { n: total, size: formatSize(counts.bytes) })}</summary>
        <table class="file-table">
          <thead>
            <tr>
              <th>{t("fileName")}</th>
              <th>{t("size")}</th>
              <th>{t("overall")}</th>
              <th>{t("state")}</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {group.items.map((item) => (
              <FileRow key={item.id} item={item} />
            ))}
          </tbody>
        </table>
      </details>
      {finished && group.uid && <RequestForm studyUid={group.uid} modalities={modalities} />}
    </article>
  );
}

export function UploadPanel() {
  void uploader.tick.value; // re-render on every change of the uploads
  const items = uploader.items;
  const studies = groups(items);
  const problems = items.filter((i) => i.state === "invalid" || i.state === "skipped");
  const counts = uploader.counts();
  const reading = counts.reading > 0;
  const active = counts.pending + counts.sending > 0;
  const phase = active ? uploader.phase : counts.stored && !counts.ready ? "done" : "idle";
  return (
    <section class="upload panel" aria-labelledby="upload-title">
      <h2 id="upload-title">{t("title")}</h2>
      <DropZone />
      {reading && <p class="muted">{t("reading")}</p>}
      {studies.length > 0 && (
        <div class="upload-toolbar">
          <button
            type="button"
            class="primary"
            disabled={reading || counts.ready === 0}
            onClick={() => void uploader.start()}
          >
            {t("startAll")}
          </button>
          {counts.ready > 0 && <span class="check-patient">{t("checkPatient")}</span>}
          <div class="overall">
            <Progress value={counts.sentBytes} max={counts.bytes} label={t("overall")} />
            <span class="phase" role="status" data-testid="upload-phase" data-phase={phase}>
              {phase === "offline"
                ? t("offline")
                : phase === "waiting"
                  ? t("waiting")
                  : phase === "sending"
                    ? t("sending")
                    : phase === "done"
                      ? t("done")
                      : ""}
            </span>
          </div>
          <button
            type="button"
            disabled={active}
            onClick={() => uploader.remove((i) => i.state === "stored" || i.state === "invalid" || i.state === "skipped")}
          >
            {t("clear")}
          </button>
        </div>
      )}
      {studies.map((group) => (
        <StudyCard key={group.uid} group={group} />
      ))}
      {problems.length > 0 && (
        <div class="problems panel" data-testid="problems">
          <h3>{t("problems")}</h3>
          <ul>
            {problems.map((item) => (
              <li key={item.id} data-testid="problem" class={item.state === "invalid" ? "error" : "muted"}>
                <span class="file-name">{item.name}</span>：{reasonText(item)}
              </li>
            ))}
          </ul>
        </div>
      )}
    </section>
  );
}
