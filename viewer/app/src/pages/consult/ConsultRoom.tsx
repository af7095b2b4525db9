// The consult room (会诊室): lobby, video tiles (mesh, up to 4), mute, camera, screen share,
// chat kept with the consult, presence, connection quality, reconnect, low-bandwidth mode, and
// the host's outcome form at the end. The shared viewer (共享阅片): the case's images in our own
// viewer, which the host drives and the others follow (viewer-sync), and key image links.
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, api } from "../../api";
import { defineMessages, formatDateTime } from "../../i18n";
import { me } from "../../session";
import { ImageViewer, type ViewTarget, type ViewerState } from "../../viewers/image/ImageViewer";
import { type Quality, type RemoteView, RoomClient } from "./room";
import type { Consult } from "./types";
import { type KeyImage, chatParts, keyImageHref } from "./viewerSync";
import "./consult.css";

const t = defineMessages(
  {
    title: "会诊室 #{id}",
    case: "病例 #{id}",
    starting: "正在进入会诊…",
    lobby_wait: "正在等候主持人允许您进入会诊…",
    lobby_host: "等候室",
    lobby_empty: "无人等候",
    admit: "允许进入",
    remove: "移出",
    reconnecting: "连接中断，正在重新连接…",
    mute: "静音",
    unmute: "取消静音",
    camera_off: "关闭摄像头",
    camera_on: "打开摄像头",
    share: "共享屏幕",
    stop_share: "停止共享",
    low_bw: "低带宽（仅音频）",
    low_bw_off: "恢复视频",
    leave: "离开",
    end: "结束会诊并填写结论",
    you: "我",
    host: "主持",
    mic_off: "麦克风关",
    cam_off: "摄像头关",
    sharing: "共享屏幕中",
    audio_only: "仅音频",
    people: "在场人员",
    chat: "文字交流",
    chat_placeholder: "输入消息，回车发送",
    send: "发送",
    no_chat: "暂无消息",
    quality_good: "连接良好",
    quality_fair: "连接一般",
    quality_poor: "连接较差",
    quality_unknown: "连接中",
    quality_detail: "往返 {rtt} 毫秒 · 丢包 {loss}% · {kbps} kbps",
    recording: "录制中",
    no_camera: "未找到摄像头：仅以音频参加",
    no_media: "无法使用摄像头和麦克风：可观看、收听和文字交流",
    screen_unavailable: "此浏览器无法共享屏幕",
    chat_failed: "消息未能保存，请重试",
    refused_generic: "无法进入会诊室。",
    refused_token: "会诊凭证无效或已过期，无法进入会诊室。请返回会诊列表重新进入。",
    refused_full: "会诊室人数已满。",
    refused_removed: "您已被主持人移出本次会诊。",
    refused_replaced: "您已在另一个窗口进入本次会诊。",
    refused_closed: "本次会诊已结束或已取消。",
    refused_not_participant: "您不是本次会诊的参与者。",
    back: "返回会诊列表",
    left: "您已离开会诊室。",
    rejoin: "重新进入",
    outcome: "会诊结论",
    notes: "会诊记录",
    advice: "诊疗建议",
    referral: "转诊",
    referral_none: "不转诊",
    referral_up: "上转至上级医院",
    referral_down: "下转基层随访",
    destination: "转诊目的机构",
    referral_reason: "转诊原因",
    file: "提交结论",
    filed: "会诊结论已提交。",
    error: "出错：{detail}",
    shared_viewer: "共享阅片",
    shared_host: "您在主持阅片：其他人看到与您相同的图像",
    shared_following: "正在跟随主持人阅片",
    shared_waiting: "等待主持人打开影像",
    shared_detached: "您在独立浏览",
    detach: "独立浏览",
    follow: "跟随主持人",
    share_key_image: "分享关键图像",
    key_image_text: "关键图像：图像 {n}/{total}",
    key_image_link: "打开图像",
    no_study: "无法打开本病例的影像",
  },
  {
    title: "Consult room #{id}",
    case: "Case #{id}",
    starting: "Entering the consult…",
    lobby_wait: "Waiting for the host to let you in…",
    lobby_host: "Lobby",
    lobby_empty: "Nobody waiting",
    admit: "Admit",
    remove: "Remove",
    reconnecting: "Connection lost, reconnecting…",
    mute: "Mute",
    unmute: "Unmute",
    camera_off: "Camera off",
    camera_on: "Camera on",
    share: "Share screen",
    stop_share: "Stop sharing",
    low_bw: "Low bandwidth (audio only)",
    low_bw_off: "Video again",
    leave: "Leave",
    end: "End and file the outcome",
    you: "You",
    host: "Host",
    mic_off: "Mic off",
    cam_off: "Camera off",
    sharing: "Sharing screen",
    audio_only: "Audio only",
    people: "In the room",
    chat: "Chat",
    chat_placeholder: "Type a message, Enter to send",
    send: "Send",
    no_chat: "No messages yet",
    quality_good: "Good connection",
    quality_fair: "Fair connection",
    quality_poor: "Poor connection",
    quality_unknown: "Connecting",
    quality_detail: "RTT {rtt} ms · loss {loss}% · {kbps} kbps",
    recording: "Recording",
    no_camera: "No camera found: taking part by audio",
    no_media: "Camera and microphone unavailable: you can watch, listen and chat",
    screen_unavailable: "Screen sharing is not available in this browser",
    chat_failed: "The message was not saved; try again",
    refused_generic: "Could not enter the consult room.",
    refused_token: "The join token is invalid or has expired: you cannot enter. Go back to the consult list and join again.",
    refused_full: "The consult room is full.",
    refused_removed: "The host removed you from this consult.",
    refused_replaced: "You joined this consult from another window.",
    refused_closed: "This consult has ended or was cancelled.",
    refused_not_participant: "You are not a participant of this consult.",
    back: "Back to consults",
    left: "You left the consult room.",
    rejoin: "Join again",
    outcome: "Consult outcome",
    notes: "Notes",
    advice: "Advice",
    referral: "Referral",
    referral_none: "No referral",
    referral_up: "Up to a higher-level hospital",
    referral_down: "Back down for follow-up",
    destination: "Destination",
    referral_reason: "Reason for referral",
    file: "File the outcome",
    filed: "The outcome is filed.",
    error: "Error: {detail}",
    shared_viewer: "Shared viewer",
    shared_host: "You drive the viewer: the others see the same image",
    shared_following: "Following the host",
    shared_waiting: "Waiting for the host to open the images",
    shared_detached: "You are browsing on your own",
    detach: "Browse on my own",
    follow: "Follow the host",
    share_key_image: "Share key image",
    key_image_text: "Key image: image {n}/{total}",
    key_image_link: "Open image",
    no_study: "The case's images cannot be opened",
  },
);

export function ConsultRoom(props: { consultId?: string }) {
  const consultId = Number(props.consultId);
  const [client, setClient] = useState<RoomClient | null>(null);
  const [consult, setConsult] = useState<Consult | null>(null);
  const [showOutcome, setShowOutcome] = useState(false);
  const [filed, setFiled] = useState(false);
  const [generation, setGeneration] = useState(0);
  // A key image clicked in the chat, shown in the shared viewer (n: clicked again, go again).
  const [keyImage, setKeyImage] = useState<{ image: KeyImage; n: number } | null>(null);

  useEffect(() => {
    api<Consult>(`/api/consults/${consultId}`).then(setConsult, () => setConsult(null));
  }, [consultId, filed]);

  useEffect(() => {
    const room = new RoomClient(consultId);
    setClient(room);
    void room.start();
    const leave = () => room.stop();
    window.addEventListener("pagehide", leave);
    return () => {
      window.removeEventListener("pagehide", leave);
      room.stop();
    };
  }, [consultId, generation]);

  if (!client) return <p class="loading" />;
  const phase = client.phase.value;
  const isHost = client.role.value === "host";

  return (
    <main class="consult-room">
      <header class="room-head">
        <h1>{t("title", { id: consultId })}</h1>
        {consult && (
          <a href={`/app/cases/${consult.case_id}`} class="muted">
            {t("case", { id: consult.case_id })}
          </a>
        )}
        {consult?.reason && <span class="reason">{consult.reason}</span>}
        {client.recording.value && <span class="badge recording">{t("recording")}</span>}
      </header>
      {client.reconnecting.value && phase !== "refused" && (
        <p class="banner warn" role="status">
          {t("reconnecting")}
        </p>
      )}
      {client.notice.value && (
        <p class="banner" role="status">
          {t(client.notice.value)}
        </p>
      )}
      {phase === "starting" && <p class="empty">{t("starting")}</p>}
      {phase === "refused" && (
        <div class="panel refused" role="alert">
          <p class="error">{t(client.refusal.value ?? "refused_generic")}</p>
          <a href="/app/consults">{t("back")}</a>
        </div>
      )}
      {phase === "left" && (
        <div class="panel">
          <p>{filed ? t("filed") : t("left")}</p>
          {!filed && (
            <button type="button" onClick={() => setGeneration(generation + 1)}>
              {t("rejoin")}
            </button>
          )}{" "}
          <a href="/app/consults">{t("back")}</a>
        </div>
      )}
      {phase === "lobby" && (
        <div class="panel lobby-wait" role="status">
          <p>{t("lobby_wait")}</p>
          <LocalPreview client={client} />
        </div>
      )}
      {phase === "in" && (
        <div class="room-body">
          <section class="stage">
            <Tiles client={client} />
            <Controls client={client} isHost={isHost} onEnd={() => setShowOutcome(true)} />
            {consult && <SharedViewer client={client} caseId={consult.case_id} keyImage={keyImage} />}
          </section>
          <aside class="side">
            {isHost && <Lobby client={client} />}
            <People client={client} />
            <Chat client={client} onKeyImage={(image) => setKeyImage({ image, n: (keyImage?.n ?? 0) + 1 })} />
          </aside>
        </div>
      )}
      {isHost && showOutcome && consult?.status === "scheduled" && (
        <OutcomeForm
          consultId={consultId}
          onFiled={() => {
            setFiled(true);
            setShowOutcome(false);
            client.stop();
          }}
          onCancel={() => setShowOutcome(false)}
        />
      )}
      {phase !== "in" && phase !== "lobby" && client.chat.value.length > 0 && <Chat client={client} readOnly />}
    </main>
  );
}

function VideoOf(props: { stream: MediaStream | null; muted?: boolean; label: string }) {
  const ref = useRef<HTMLVideoElement>(null);
  useEffect(() => {
    const video = ref.current;
    if (!video) return;
    if (video.srcObject !== props.stream) video.srcObject = props.stream;
    void video.play().catch(() => undefined);
  }, [props.stream]);
  return <video ref={ref} autoplay playsInline muted={props.muted} aria-label={props.label} />;
}

function LocalPreview(props: { client: RoomClient }) {
  return (
    <div class="tile local small">
      <VideoOf stream={props.client.localStream.value} muted label={t("you")} />
      <span class="tile-name">{t("you")}</span>
    </div>
  );
}

function Tiles(props: { client: RoomClient }) {
  const client = props.client;
  // The recorder (an aiortc peer, with everyone's consent) gets our media but has no tile.
  const remotes = client.remotes.value.filter((r) => r.info.role !== "recorder");
  const low = client.lowBandwidth.value;
  return (
    <div class={`tiles n${Math.min(4, remotes.length + 1)}`}>
      <div class="tile local">
        <VideoOf stream={client.localStream.value} muted label={t("you")} />
        <TileLabel
          name={me.value?.display_name || me.value?.username || t("you")}
          suffix={t("you")}
          audio={client.audio.value}
          video={client.video.value && !low}
          screen={client.screen.value}
        />
      </div>
      {remotes.map((remote) => (
        <RemoteTile key={remote.info.peer} remote={remote} audioOnly={low} />
      ))}
    </div>
  );
}

function RemoteTile(props: { remote: RemoteView; audioOnly: boolean }) {
  const { info, stream, quality } = props.remote;
  return (
    <div class={`tile remote${props.audioOnly || !info.video ? " no-video" : ""}`} data-peer={info.peer}>
      <VideoOf stream={stream} label={info.name} />
      <TileLabel
        name={info.name}
        suffix={info.role === "host" ? t("host") : ""}
        audio={info.audio}
        video={info.video}
        screen={info.screen}
      />
      <QualityBadge quality={quality} />
    </div>
  );
}

function TileLabel(props: { name: string; suffix: string; audio: boolean; video: boolean; screen: boolean }) {
  return (
    <div class="tile-name">
      <span class="name">{props.name}</span>
      {props.suffix && <span class="badge">{props.suffix}</span>}
      {!props.audio && <span class="badge off">{t("mic_off")}</span>}
      {!props.video && <span class="badge off">{t("cam_off")}</span>}
      {props.screen && <span class="badge">{t("sharing")}</span>}
    </div>
  );
}

function QualityBadge(props: { quality: Quality }) {
  const q = props.quality;
  const detail =
    q.rttMs === null
      ? ""
      : t("quality_detail", { rtt: Math.round(q.rttMs), loss: q.lossPercent.toFixed(1), kbps: q.kbps === null ? "–" : Math.round(q.kbps) });
  return (
    <div class={`quality ${q.grade}`} title={detail} data-grade={q.grade}>
      <span class="bars" aria-hidden="true">
        <i />
        <i />
        <i />
      </span>
      <span>{t(`quality_${q.grade}`)}</span>
      {detail && <span class="detail">{detail}</span>}
    </div>
  );
}

function Controls(props: { client: RoomClient; isHost: boolean; onEnd: () => void }) {
  const c = props.client;
  useEffect(() => {
    // Shortcuts as in other meeting apps: Ctrl+D mute, Ctrl+E camera.
    const onKey = (event: KeyboardEvent) => {
      if (!event.ctrlKey || event.altKey) return;
      if (event.key === "d") c.setAudio(!c.audio.value);
      else if (event.key === "e") c.setVideo(!c.video.value);
      else return;
      event.preventDefault();
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [c]);
  return (
    <div class="controls" role="toolbar">
      <button type="button" aria-pressed={!c.audio.value} title="Ctrl+D" onClick={() => c.setAudio(!c.audio.value)}>
        {c.audio.value ? t("mute") : t("unmute")}
      </button>
      <button type="button" aria-pressed={!c.video.value} title="Ctrl+E" onClick={() => c.setVideo(!c.video.value)}>
        {c.video.value ? t("camera_off") : t("camera_on")}
      </button>
      <button type="button" aria-pressed={c.screen.value} onClick={() => void c.toggleScreen()}>
        {c.screen.value ? t("stop_share") : t("share")}
      </button>
      <button type="button" aria-pressed={c.lowBandwidth.value} onClick={() => void c.setLowBandwidth(!c.lowBandwidth.value)}>
        {c.lowBandwidth.value ? t("low_bw_off") : t("low_bw")}
      </button>
      <button type="button" class="danger" onClick={() => c.stop()}>
        {t("leave")}
      </button>
      {props.isHost && (
        <button type="button" class="primary" onClick={props.onEnd}>
          {t("end")}
        </button>
      )}
    </div>
  );
}

function Lobby(props: { client: RoomClient }) {
  const waiting = props.client.waiting.value;
  return (
    <section class="panel lobby">
      <h2>{t("lobby_host")}</h2>
      {waiting.length === 0 && <p class="muted">{t("lobby_empty")}</p>}
      <ul>
        {waiting.map((p) => (
          <li key={p.peer}>
            <span class="name">{p.name}</span>
            <button type="button" class="primary" onClick={() => props.client.admit(p.peer)}>
              {t("admit")}
            </button>
            <button type="button" onClick={() => props.client.remove(p.peer)}>
              {t("remove")}
            </button>
          </li>
        ))}
      </ul>
    </section>
  );
}

function People(props: { client: RoomClient }) {
  const c = props.client;
  const isHost = c.role.value === "host";
  return (
    <section class="panel people">
      <h2>{t("people")}</h2>
      <ul>
        <li>
          <span class="name">{me.value?.display_name || me.value?.username}</span> <span class="badge">{t("you")}</span>
          {!c.audio.value && <span class="badge off">{t("mic_off")}</span>}
          {(!c.video.value || c.lowBandwidth.value) && <span class="badge off">{t("cam_off")}</span>}
        </li>
        {c.remotes.value
          .filter(({ info }) => info.role !== "recorder")
          .map(({ info }) => (
          <li key={info.peer}>
            <span class="name">{info.name}</span>
            {info.role === "host" && <span class="badge">{t("host")}</span>}
            {!info.audio && <span class="badge off">{t("mic_off")}</span>}
            {!info.video && <span class="badge off">{t("cam_off")}</span>}
            {isHost && info.role !== "recorder" && (
              <button type="button" class="link" onClick={() => c.remove(info.peer)}>
                {t("remove")}
              </button>
            )}
          </li>
        ))}
      </ul>
    </section>
  );
}

/** Where my own viewer goes when I am not following (a key image; the study to show). */
interface Local {
  study: string;
  target?: ViewTarget;
}

function SharedViewer(props: { client: RoomClient; caseId: number; keyImage: { image: KeyImage; n: number } | null }) {
  const { client } = props;
  const isHost = client.role.value === "host";
  const host = client.hostViewer.value;
  const [caseStudy, setCaseStudy] = useState<string | null | undefined>(undefined);
  const [following, setFollowing] = useState(true);
  const [own, setOwn] = useState<ViewerState | null>(null);
  const [local, setLocal] = useState<Local | null>(null);

  useEffect(() => {
    api<{ study_instance_uid: string }>(`/api/cases/${props.caseId}`).then(
      (found) => setCaseStudy(found.study_instance_uid),
      () => setCaseStudy(null),
    );
  }, [props.caseId]);

  useEffect(() => {
    const jump = props.keyImage?.image;
    if (!jump) return;
    // A guest looks on his own; the host takes the room along.
    if (!isHost) setFollowing(false);
    setLocal({ study: jump.study, target: { series: jump.series, instance: jump.instance, frame: jump.frame } });
  }, [props.keyImage]);

  const onStateChange = (state: ViewerState) => {
    setOwn(state);
    if (isHost) client.shareViewer(state);
  };

  const follows = !isHost && following;
  const study = follows ? (host?.study ?? caseStudy) : (local?.study ?? own?.study ?? caseStudy);
  const target: ViewTarget | undefined = follows ? (host ?? undefined) : local?.target;

  async function shareKeyImage() {
    if (!own) return;
    const text = `${t("key_image_text", { n: own.index + 1, total: own.total })} ${keyImageHref(own)}`;
    await client.sendChat(text);
  }

  return (
    <section class="panel shared-viewer" data-testid="shared-viewer" data-following={follows ? "true" : "false"}
      data-host-slice={host ? host.index + 1 : undefined}
    >
      <div class="shared-head">
        <h2>{t("shared_viewer")}</h2>
        <span class="muted" role="status">
          {isHost ? t("shared_host") : !following ? t("shared_detached") : host ? t("shared_following") : t("shared_waiting")}
        </span>
        {!isHost &&
          (following ? (
            <button type="button" onClick={() => setFollowing(false)}>
              {t("detach")}
            </button>
          ) : (
            <button
              type="button"
              class="primary"
              onClick={() => {
                setLocal(null);
                setFollowing(true);
              }}
            >
              {t("follow")}
            </button>
          ))}
        <button type="button" disabled={!own} onClick={() => void shareKeyImage()}>
          {t("share_key_image")}
        </button>
      </div>
      {caseStudy === null && !study && <p class="error">{t("no_study")}</p>}
      {study && (
        <div class="shared-stage">
          <ImageViewer key={study} studyInstanceUid={study} target={target} onStateChange={onStateChange} />
        </div>
      )}
    </section>
  );
}

function Chat(props: { client: RoomClient; readOnly?: boolean; onKeyImage?: (image: KeyImage) => void }) {
  const [text, setText] = useState("");
  const list = useRef<HTMLOListElement>(null);
  const lines = props.client.chat.value;
  useEffect(() => {
    list.current?.scrollTo({ top: list.current.scrollHeight });
  }, [lines.length]);

  async function submit(event: Event) {
    event.preventDefault();
    const value = text.trim();
    if (!value) return;
    if (await props.client.sendChat(value)) setText("");
  }

  return (
    <section class="panel chat">
      <h2>{t("chat")}</h2>
      <ol ref={list} class="chat-lines" aria-live="polite">
        {lines.length === 0 && <li class="muted">{t("no_chat")}</li>}
        {lines.map((line) => (
          <li key={line.key}>
            <div class="meta">
              <span class="name">{line.name}</span> <time>{formatDateTime(line.at)}</time>
            </div>
            <div class="text">
              {chatParts(line.text).map((part, i) =>
                "link" in part ? (
                  <a
                    key={i}
                    class="key-image"
                    href={part.href}
                    title={part.href}
                    onClick={(event) => {
                      const plain = !(event.ctrlKey || event.metaKey || event.shiftKey || event.altKey);
                      if (!props.onKeyImage || !plain || event.button !== 0) return;
                      // Shown in the room's viewer; the router must not leave the room.
                      event.preventDefault();
                      event.stopPropagation();
                      props.onKeyImage(part.link);
                    }}
                  >
                    {t("key_image_link")}
                  </a>
                ) : (
                  part.text
                ),
              )}
            </div>
          </li>
        ))}
      </ol>
      {!props.readOnly && (
        <form onSubmit={submit} class="chat-form">
          <input
            name="chat"
            maxLength={4000}
            value={text}
            placeholder={t("chat_placeholder")}
            aria-label={t("chat")}
            onInput={(e) => setText((e.target as HTMLInputElement).value)}
          />
          <button type="submit" disabled={!text.trim()}>
            {t("send")}
          </button>
        </form>
      )}
    </section>
  );
}

interface Institution {
  code: string;
  name: string;
}

function OutcomeForm(props: { consultId: number; onFiled: () => void; onCancel: () => void }) {
  const [institutions, setInstitutions] = useState<Institution[]>([]);
  const [notes, setNotes] = useState("");
  const [advice, setAdvice] = useState("");
  const [referral, setReferral] = useState<"none" | "up" | "down">("none");
  const [destination, setDestination] = useState("");
  const [reason, setReason] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    api<Institution[]>("/api/institutions").then(setInstitutions, () => setInstitutions([]));
  }, []);

  async function submit(event: Event) {
    event.preventDefault();
    setBusy(true);
    setError("");
    try {
      await api(`/api/consults/${props.consultId}/outcome`, {
        body: {
          notes,
          advice,
          referral,
          referral_institution: referral === "none" ? null : destination,
          referral_reason: referral === "none" ? "" : reason,
        },
      });
      props.onFiled();
    } catch (e) {
      setError(t("error", { detail: e instanceof ApiError ? e.detail : String(e) }));
    } finally {
      setBusy(false);
    }
  }

  return (
    <form
      class="panel outcome"
      onSubmit={submit}
      onKeyDown={(e) => e.key === "Escape" && props.onCancel()}
      aria-label={t("outcome")}
    >
      <h2>{t("outcome")}</h2>
      <label>
        {t("notes")}
        <textarea name="notes" value={notes} onInput={(e) => setNotes((e.target as HTMLTextAreaElement).value)} />
      </label>
      <label>
        {t("advice")}
        <textarea name="advice" value={advice} onInput={(e) => setAdvice((e.target as HTMLTextAreaElement).value)} />
      </label>
      <fieldset>
        <legend>{t("referral")}</legend>
        {(["none", "up", "down"] as const).map((value) => (
          <label key={value} class="inline">
            <input
              type="radio"
              name="referral"
              value={value}
              checked={referral === value}
              onChange={() => setReferral(value)}
            />
            {t(`referral_${value}`)}
          </label>
        ))}
      </fieldset>
      {referral !== "none" && (
        <>
          <label>
            {t("destination")}
            <select
              name="destination"
              required
              value={destination}
              onChange={(e) => setDestination((e.target as HTMLSelectElement).value)}
            >
              <option value="" />
              {institutions.map((i) => (
                <option key={i.code} value={i.code}>
                  {i.name} ({i.code})
                </option>
              ))}
            </select>
          </label>
          <label>
            {t("referral_reason")}
            <textarea
              name="referral_reason"
              required
              value={reason}
              onInput={(e) => setReason((e.target as HTMLTextAreaElement).value)}
            />
          </label>
        </>
      )}
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      <button class="primary" type="submit" disabled={busy}>
        {t("file")}
      </button>
    </form>
  );
}
