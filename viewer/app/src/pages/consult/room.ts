// The consult room's engine: the signalling socket (protocol v1, signaling/protocol.py), one
// RTCPeerConnection per remote participant (mesh), local media, stats. The page renders its
// signals; nothing here touches the DOM.
import { signal } from "@preact/signals";
import { ApiError, api } from "../../api";
import type { ViewerState } from "../../viewers/image/ImageViewer";
import type { ChatLine, JoinTicket, PeerInfo } from "./types";
import { decodeViewerState, encodeViewerState } from "./viewerSync";

export type Phase = "starting" | "lobby" | "in" | "refused" | "left" | "closed";

/** Why the server closed the socket (signaling/protocol.py CloseCode) → a message key. */
const FINAL_CLOSE: Record<number, RefusalKey> = {
  4000: "refused_generic",
  4001: "refused_token",
  4002: "refused_token",
  4003: "refused_token",
  4004: "refused_token",
  4005: "refused_full",
  4006: "refused_removed",
  4009: "refused_replaced",
  4010: "refused_generic",
};
export type RefusalKey =
  | "refused_generic"
  | "refused_token"
  | "refused_full"
  | "refused_removed"
  | "refused_replaced"
  | "refused_closed"
  | "refused_not_participant";

export interface Quality {
  rttMs: number | null;
  lossPercent: number;
  kbps: number | null; // null until two samples are in
  grade: "good" | "fair" | "poor" | "unknown";
}

export interface RemoteView {
  info: PeerInfo;
  stream: MediaStream;
  state: RTCIceConnectionState;
  quality: Quality;
}

export interface ChatView {
  key: string;
  name: string;
  text: string;
  at: string;
}

interface Remote {
  info: PeerInfo;
  pc: RTCPeerConnection;
  stream: MediaStream;
  offerer: boolean;
  control: RTCDataChannel | null;
  wantsAudioOnly: boolean;
  quality: Quality;
  lastBytes: number;
  lastAt: number;
}

/** The host sends the shared viewer's state at most this often (the last one always goes). */
const VIEWER_SYNC_MS = 100;

const NO_QUALITY: Quality = { rttMs: null, lossPercent: 0, kbps: null, grade: "unknown" };

export class RoomClient {
  readonly phase = signal<Phase>("starting");
  readonly refusal = signal<RefusalKey | null>(null);
  readonly refusalDetail = signal("");
  readonly reconnecting = signal(false);
  readonly remotes = signal<RemoteView[]>([]);
  readonly waiting = signal<PeerInfo[]>([]);
  readonly chat = signal<ChatView[]>([]);
  readonly audio = signal(true);
  readonly video = signal(true);
  readonly screen = signal(false);
  readonly lowBandwidth = signal(false);
  readonly role = signal<string>("");
  readonly localStream = signal<MediaStream | null>(null);
  readonly notice = signal<"no_camera" | "no_media" | "screen_unavailable" | "chat_failed" | null>(null);
  readonly recording = signal(false);
  /** The host's shared viewer, as last heard (guests); null until the host sends one. */
  readonly hostViewer = signal<ViewerState | null>(null);

  private ticket: JoinTicket | null = null;
  private ws: WebSocket | null = null;
  private remotesById = new Map<string, Remote>();
  private camera: MediaStreamTrack | null = null;
  private screenTrack: MediaStreamTrack | null = null;
  private queue: Promise<void> = Promise.resolve();
  private retry = 0;
  private retryTimer = 0;
  private timers: number[] = [];
  private ending = false;
  private viewerState: ViewerState | null = null;
  private viewerTimer = 0;
  private viewerSentAt = 0;

  constructor(readonly consultId: number) {}

  async start(): Promise<void> {
    this.timers.push(window.setInterval(() => void this.sampleStats(), 2000));
    this.timers.push(window.setInterval(() => this.send({ type: "ping" }), 15000));
    window.addEventListener("online", this.onOnline);
    await Promise.all([this.loadHistory(), this.openMedia()]);
    if (!this.ending) await this.connect();
  }

  /** Leave the room: tell the server, close every connection, free the camera. */
  stop(phase: Phase = "left"): void {
    this.ending = true;
    window.removeEventListener("online", this.onOnline);
    window.clearTimeout(this.retryTimer);
    window.clearTimeout(this.viewerTimer);
    this.timers.forEach((id) => window.clearInterval(id));
    this.send({ type: "leave" });
    this.ws?.close();
    this.closeAll();
    this.localStream.value?.getTracks().forEach((track) => track.stop());
    this.screenTrack?.stop();
    if (this.phase.value !== "refused") this.phase.value = phase;
  }

  // --- media ---------------------------------------------------------------------------------

  private async openMedia(): Promise<void> {
    let stream: MediaStream | null = null;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: true,
        video: { width: { ideal: 640 }, height: { ideal: 360 } },
      });
    } catch {
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio: true });
        this.notice.value = "no_camera";
      } catch {
        this.notice.value = "no_media"; // still join: see, hear and chat
      }
    }
    this.camera = stream?.getVideoTracks()[0] ?? null;
    this.video.value = this.camera !== null;
    this.audio.value = (stream?.getAudioTracks().length ?? 0) > 0;
    this.localStream.value = stream;
  }

  setAudio(on: boolean): void {
    this.localStream.value?.getAudioTracks().forEach((track) => (track.enabled = on));
    this.audio.value = on;
    this.sendPresence();
  }

  setVideo(on: boolean): void {
    if (this.camera) this.camera.enabled = on;
    this.video.value = on && this.camera !== null;
    this.sendPresence();
  }

  async toggleScreen(): Promise<void> {
    if (this.screenTrack) {
      this.stopScreen();
      return;
    }
    try {
      const display = await navigator.mediaDevices.getDisplayMedia({ video: true });
      const track = display.getVideoTracks()[0];
      if (!track) throw new Error("no screen track");
      this.screenTrack = track;
      track.onended = () => this.stopScreen();
      this.screen.value = true;
      this.localStream.value = new MediaStream([...this.audioTracks(), track]);
      await this.applyOutgoingVideo();
      this.sendPresence();
    } catch {
      this.notice.value = "screen_unavailable"; // headless or refused: the call goes on
    }
  }

  private stopScreen(): void {
    this.screenTrack?.stop();
    this.screenTrack = null;
    this.screen.value = false;
    this.localStream.value = new MediaStream([...this.audioTracks(), ...(this.camera ? [this.camera] : [])]);
    void this.applyOutgoingVideo();
    this.sendPresence();
  }

  /** Low-bandwidth mode: audio only both ways (others are asked over the data channel). */
  async setLowBandwidth(on: boolean): Promise<void> {
    this.lowBandwidth.value = on;
    await this.applyOutgoingVideo();
    for (const remote of this.remotesById.values()) this.tellControl(remote);
    this.sendPresence();
  }

  private audioTracks(): MediaStreamTrack[] {
    return this.localStream.value?.getAudioTracks() ?? [];
  }

  private outgoingVideo(): MediaStreamTrack | null {
    if (this.lowBandwidth.value) return null;
    return this.screenTrack ?? this.camera;
  }

  private async applyOutgoingVideo(): Promise<void> {
    const track = this.outgoingVideo();
    for (const remote of this.remotesById.values()) {
      for (const sender of remote.pc.getSenders()) {
        if (sender.track?.kind === "video" || (sender.track === null && this.isVideoSender(remote.pc, sender))) {
          await sender.replaceTrack(track).catch(() => undefined);
        }
      }
      await this.applyRemoteWish(remote);
    }
  }

  private isVideoSender(pc: RTCPeerConnection, sender: RTCRtpSender): boolean {
    return pc.getTransceivers().some((t) => t.sender === sender && t.receiver.track.kind === "video");
  }

  // --- signalling ----------------------------------------------------------------------------

  private async loadHistory(): Promise<void> {
    try {
      const lines = await api<ChatLine[]>(`/api/consults/${this.consultId}/messages`);
      this.chat.value = lines.map((line) => ({
        key: `h${line.id}`,
        name: line.display_name || line.username,
        text: line.text,
        at: line.created_at,
      }));
    } catch {
      // The room still works without its history; joining reports what is wrong.
    }
  }

  private async connect(): Promise<void> {
    try {
      this.ticket = await api<JoinTicket>(`/api/consults/${this.consultId}/join`, { method: "POST" });
    } catch (error) {
      if (error instanceof ApiError && error.status < 500 && error.status !== 401) {
        this.refuse(error.status === 409 ? "refused_closed" : "refused_not_participant", error.detail);
      } else {
        this.scheduleReconnect();
      }
      return;
    }
    this.role.value = this.ticket.role;
    const ws = new WebSocket(this.ticket.signaling_url);
    this.ws = ws;
    const token = this.ticket.token;
    ws.onopen = () => ws.send(JSON.stringify({ v: 1, type: "join", token }));
    ws.onmessage = (event) => {
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(String(event.data)) as Record<string, unknown>;
      } catch {
        return;
      }
      // In order: an offer must be applied before the candidates that follow it.
      this.queue = this.queue.then(() => this.handle(message)).catch(() => undefined);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws || this.ending) return;
      this.ws = null;
      const final = FINAL_CLOSE[event.code];
      if (final) {
        this.refuse(final, event.reason);
      } else {
        this.scheduleReconnect();
      }
    };
  }

  private refuse(key: RefusalKey, detail: string): void {
    this.refusal.value = key;
    this.refusalDetail.value = detail;
    this.phase.value = "refused";
    this.stop("refused");
  }

  private readonly onOnline = () => {
    if (this.ws === null && !this.ending) {
      window.clearTimeout(this.retryTimer);
      void this.connect();
    }
  };

  private scheduleReconnect(): void {
    if (this.ending) return;
    this.reconnecting.value = true;
    const delay = Math.min(8000, 500 * 2 ** this.retry++);
    window.clearTimeout(this.retryTimer);
    this.retryTimer = window.setTimeout(() => void this.connect(), delay);
  }

  private send(message: Record<string, unknown>): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ v: 1, ...message }));
  }

  private sendPresence(): void {
    this.send({
      type: "presence",
      audio: this.audio.value,
      video: this.video.value && !this.lowBandwidth.value,
      screen: this.screen.value,
    });
  }

  private async handle(m: Record<string, unknown>): Promise<void> {
    switch (m.type) {
      case "welcome": {
        this.retry = 0;
        this.reconnecting.value = false;
        // A fresh socket is a new peer to the others: their old connections to us are gone.
        this.closeAll();
        this.waiting.value = (m.waiting as PeerInfo[] | undefined) ?? [];
        this.recording.value = Boolean((m.recording as { on?: boolean } | undefined)?.on);
        this.sendPresence();
        if (m.admitted) {
          this.phase.value = "in";
          this.sendViewer(); // the host back after a drop: the others see where he is
          await this.callEveryone(m.peers as PeerInfo[]);
        } else {
          this.phase.value = "lobby";
        }
        break;
      }
      case "admitted":
        this.phase.value = "in";
        await this.callEveryone(m.peers as PeerInfo[]);
        break;
      case "lobby":
        this.waiting.value = m.waiting as PeerInfo[];
        break;
      case "join":
        // They offer to us (whoever enters calls); note them until the offer comes.
        this.ensureRemote(m.peer as PeerInfo, false);
        this.sendViewer(); // a late joiner starts where the host is
        break;
      case "leave":
        this.drop(String(m.peer));
        break;
      case "presence": {
        const info = m.peer as PeerInfo;
        const remote = this.remotesById.get(info.peer);
        if (remote) remote.info = info;
        this.publish();
        break;
      }
      case "offer":
        await this.answer(String(m.from), String(m.sdp));
        break;
      case "answer": {
        const remote = this.remotesById.get(String(m.from));
        if (!remote) break;
        try {
          await remote.pc.setRemoteDescription({ type: "answer", sdp: String(m.sdp) });
        } catch {
          // An answer from a fresh connection (aiortc has no ICE restart): start over.
          await this.call(remote.info, true);
        }
        break;
      }
      case "candidate": {
        const remote = this.remotesById.get(String(m.from));
        const init = m.candidate as RTCIceCandidateInit | null;
        if (remote) await remote.pc.addIceCandidate(init ?? undefined).catch(() => undefined);
        break;
      }
      case "chat":
        this.chat.value = [
          ...this.chat.value,
          { key: `l${this.chat.value.length}-${String(m.at)}`, name: String(m.name), text: String(m.text), at: String(m.at) },
        ];
        break;
      case "recording":
        this.recording.value = Boolean(m.on);
        break;
      case "viewer-sync": {
        const state = decodeViewerState(m.state);
        if (state) this.hostViewer.value = state;
        break;
      }
      default:
        break; // pong, error
    }
  }

  // --- the host ------------------------------------------------------------------------------

  admit(peer: string): void {
    this.send({ type: "admit", peer });
  }

  remove(peer: string): void {
    this.send({ type: "remove", peer });
  }

  /** Keep the line with the consult (HTTP), then let the room see it (relayed to all, us too). */
  async sendChat(text: string): Promise<boolean> {
    try {
      await api(`/api/consults/${this.consultId}/messages`, { body: { text } });
    } catch {
      this.notice.value = "chat_failed";
      return false;
    }
    this.send({ type: "chat", text });
    return true;
  }

  /** The host's viewer changed: tell the room, at most every VIEWER_SYNC_MS, the last state
   * always. It goes over the signalling socket, so low-bandwidth mode keeps it. */
  shareViewer(state: ViewerState): void {
    this.viewerState = state;
    if (this.role.value !== "host" || this.viewerTimer) return;
    const wait = Math.max(0, this.viewerSentAt + VIEWER_SYNC_MS - performance.now());
    this.viewerTimer = window.setTimeout(() => {
      this.viewerTimer = 0;
      this.sendViewer();
    }, wait);
  }

  private sendViewer(): void {
    if (this.role.value !== "host" || !this.viewerState) return;
    this.viewerSentAt = performance.now();
    this.send({ type: "viewer-sync", state: encodeViewerState(this.viewerState) });
  }

  // --- peer connections ----------------------------------------------------------------------

  private ensureRemote(info: PeerInfo, offerer: boolean): Remote {
    const existing = this.remotesById.get(info.peer);
    if (existing) {
      existing.info = info;
      return existing;
    }
    const iceServers: RTCIceServer[] = (this.ticket?.ice_servers ?? []).map((server) => ({
      urls: server.urls,
      ...(server.username ? { username: server.username } : {}),
      ...(server.credential ? { credential: server.credential } : {}),
    }));
    const pc = new RTCPeerConnection({ iceServers });
    const remote: Remote = {
      info,
      pc,
      stream: new MediaStream(),
      offerer,
      control: null,
      wantsAudioOnly: false,
      quality: NO_QUALITY,
      lastBytes: 0,
      lastAt: 0,
    };
    this.remotesById.set(info.peer, remote);
    pc.ontrack = (event) => {
      remote.stream.addTrack(event.track);
      // A new stream object makes the tile re-attach it.
      remote.stream = new MediaStream(remote.stream.getTracks());
      this.publish();
    };
    pc.onicecandidate = (event) =>
      this.send({ type: "candidate", to: info.peer, candidate: event.candidate ? event.candidate.toJSON() : null });
    pc.oniceconnectionstatechange = () => {
      if (pc.iceConnectionState === "failed" && remote.offerer && this.remotesById.get(info.peer) === remote) {
        void this.restartIce(remote);
      }
      this.publish();
    };
    pc.ondatachannel = (event) => this.useControl(remote, event.channel);
    this.publish();
    return remote;
  }

  private addLocalTracks(remote: Remote): void {
    const pc = remote.pc;
    const audio = this.audioTracks()[0];
    const video = this.outgoingVideo();
    const stream = this.localStream.value ?? new MediaStream();
    if (audio) pc.addTrack(audio, stream);
    else pc.addTransceiver("audio", { direction: "recvonly" });
    if (video) pc.addTrack(video, stream);
    else pc.addTransceiver("video", { direction: remote.offerer ? "sendrecv" : "recvonly" });
  }

  private async callEveryone(peers: PeerInfo[]): Promise<void> {
    for (const info of peers) await this.call(info, true);
  }

  /** Offer to one peer; `fresh` replaces any connection to it. */
  private async call(info: PeerInfo, fresh: boolean): Promise<void> {
    if (fresh) this.closeRemote(info.peer);
    const remote = this.ensureRemote(info, true);
    this.addLocalTracks(remote);
    this.useControl(remote, remote.pc.createDataChannel("control"));
    await remote.pc.setLocalDescription(await remote.pc.createOffer());
    this.send({ type: "offer", to: info.peer, sdp: remote.pc.localDescription?.sdp });
  }

  private async answer(from: string, sdp: string): Promise<void> {
    let remote = this.remotesById.get(from);
    // An offer on a live connection renegotiates it (an ICE restart); otherwise start afresh.
    const renegotiate = remote !== undefined && remote.pc.signalingState === "stable" && remote.pc.remoteDescription !== null;
    if (!renegotiate) {
      const info = remote?.info ?? { peer: from, user: 0, name: "", role: "guest", audio: true, video: true, screen: false };
      this.closeRemote(from);
      remote = this.ensureRemote(info, false);
    }
    const pc = remote!.pc;
    await pc.setRemoteDescription({ type: "offer", sdp });
    if (!renegotiate) {
      const audio = this.audioTracks()[0];
      const video = this.outgoingVideo();
      const stream = this.localStream.value ?? new MediaStream();
      for (const transceiver of pc.getTransceivers()) {
        const kind = transceiver.receiver.track.kind;
        const track = kind === "audio" ? audio : video;
        if (track) {
          await transceiver.sender.replaceTrack(track);
          transceiver.sender.setStreams?.(stream);
          transceiver.direction = "sendrecv";
        } else if (kind === "video") {
          transceiver.direction = "sendrecv"; // ready for the camera or a screen later
        }
      }
    }
    await pc.setLocalDescription(await pc.createAnswer());
    this.send({ type: "answer", to: from, sdp: pc.localDescription?.sdp });
  }

  private async restartIce(remote: Remote): Promise<void> {
    try {
      await remote.pc.setLocalDescription(await remote.pc.createOffer({ iceRestart: true }));
      this.send({ type: "offer", to: remote.info.peer, sdp: remote.pc.localDescription?.sdp });
    } catch {
      await this.call(remote.info, true);
    }
  }

  private useControl(remote: Remote, channel: RTCDataChannel): void {
    remote.control = channel;
    channel.onopen = () => this.tellControl(remote);
    channel.onmessage = (event) => {
      try {
        const wish = JSON.parse(String(event.data)) as { audioOnly?: boolean };
        remote.wantsAudioOnly = Boolean(wish.audioOnly);
        void this.applyRemoteWish(remote);
      } catch {
        // not ours
      }
    };
  }

  private tellControl(remote: Remote): void {
    if (remote.control?.readyState === "open") {
      remote.control.send(JSON.stringify({ audioOnly: this.lowBandwidth.value }));
    }
  }

  /** A peer in low-bandwidth mode gets no video from us: the encoder is switched off. */
  private async applyRemoteWish(remote: Remote): Promise<void> {
    for (const sender of remote.pc.getSenders()) {
      if (sender.track?.kind !== "video") continue;
      const parameters = sender.getParameters();
      if (!parameters.encodings?.length) continue;
      parameters.encodings.forEach((encoding) => (encoding.active = !remote.wantsAudioOnly));
      await sender.setParameters(parameters).catch(() => undefined);
    }
  }

  private closeRemote(peer: string): void {
    const remote = this.remotesById.get(peer);
    if (!remote) return;
    remote.pc.close();
    this.remotesById.delete(peer);
  }

  private drop(peer: string): void {
    this.closeRemote(peer);
    this.publish();
  }

  private closeAll(): void {
    for (const peer of [...this.remotesById.keys()]) this.closeRemote(peer);
    this.publish();
  }

  private publish(): void {
    this.remotes.value = [...this.remotesById.values()].map((r) => ({
      info: r.info,
      stream: r.stream,
      state: r.pc.iceConnectionState,
      quality: r.quality,
    }));
  }

  // --- connection quality --------------------------------------------------------------------

  private async sampleStats(): Promise<void> {
    for (const remote of this.remotesById.values()) {
      let report: RTCStatsReport;
      try {
        report = await remote.pc.getStats();
      } catch {
        continue;
      }
      let rtt: number | null = null;
      let bytes = 0;
      let lost = 0;
      let received = 0;
      report.forEach((stat: Record<string, unknown>) => {
        if (stat.type === "candidate-pair" && stat.nominated && stat.state === "succeeded") {
          if (typeof stat.currentRoundTripTime === "number") rtt = stat.currentRoundTripTime * 1000;
        } else if (stat.type === "inbound-rtp") {
          bytes += Number(stat.bytesReceived ?? 0);
          lost += Math.max(0, Number(stat.packetsLost ?? 0));
          received += Number(stat.packetsReceived ?? 0);
        }
      });
      const now = performance.now();
      const kbps = remote.lastAt ? Math.max(0, ((bytes - remote.lastBytes) * 8) / (now - remote.lastAt)) : null;
      remote.lastBytes = bytes;
      remote.lastAt = now;
      const lossPercent = lost + received > 0 ? (100 * lost) / (lost + received) : 0;
      const rttMs: number | null = rtt;
      const grade: Quality["grade"] =
        rttMs === null
          ? "unknown"
          : lossPercent > 5 || rttMs > 400
            ? "poor"
            : lossPercent > 2 || rttMs > 200
              ? "fair"
              : "good";
      remote.quality = { rttMs, lossPercent, kbps, grade };
    }
    this.publish();
  }
}
