// The shared viewer's wire format (viewer-sync `state`, signalling protocol v1) and key image
// links in the chat. Both come from other people: what does not match exactly is dropped (a
// state) or stays text (a link).
import type { ViewerState } from "../../viewers/image/ImageViewer";

/** Version of `state` inside viewer-sync; a newer host's state is ignored, not misread. */
export const VIEWER_STATE_VERSION = 1;

// DICOM UIDs (PS3.5 §9.1): digits and dots, at most 64 characters.
const UID = /^[0-9]+(\.[0-9]+)*$/;

function uid(value: unknown): value is string {
  return typeof value === "string" && value.length <= 64 && UID.test(value);
}

function finite(value: unknown): value is number {
  return typeof value === "number" && Number.isFinite(value);
}

export function encodeViewerState(state: ViewerState): Record<string, unknown> {
  return { sv: VIEWER_STATE_VERSION, ...state };
}

/** The host's viewer state from a viewer-sync message, or null when it is not one we know. */
export function decodeViewerState(raw: unknown): ViewerState | null {
  if (typeof raw !== "object" || raw === null) return null;
  const s = raw as Record<string, unknown>;
  const window = s.window as Record<string, unknown> | null | undefined;
  const pan = s.pan as unknown[] | undefined;
  if (
    s.sv !== VIEWER_STATE_VERSION ||
    !uid(s.study) ||
    !uid(s.series) ||
    !uid(s.instance) ||
    !finite(s.frame) ||
    !finite(s.index) ||
    !finite(s.total) ||
    typeof window !== "object" ||
    window === null ||
    !finite(window.center) ||
    !finite(window.width) ||
    typeof s.invert !== "boolean" ||
    !finite(s.zoom) ||
    !Array.isArray(pan) ||
    pan.length !== 2 ||
    !pan.every(finite)
  ) {
    return null;
  }
  return {
    study: s.study,
    series: s.series,
    instance: s.instance,
    frame: Math.max(1, Math.round(s.frame)),
    index: Math.max(0, Math.round(s.index)),
    total: Math.max(0, Math.round(s.total)),
    window: { center: window.center, width: window.width },
    invert: s.invert,
    zoom: s.zoom > 0 ? s.zoom : 1,
    pan: [pan[0] as number, pan[1] as number],
  };
}

export interface KeyImage {
  study: string;
  series: string;
  instance: string;
  frame?: number;
}

/** The study viewer's address of one image (pages/viewer/StudyViewer.tsx reads it back). */
export function keyImageHref(image: KeyImage): string {
  const frame = image.frame && image.frame > 1 ? `&frame=${image.frame}` : "";
  return `/app/studies/${image.study}?series=${image.series}&instance=${image.instance}${frame}`;
}

// Only our own relative link, whole: anything else in a chat line stays text.
const KEY_IMAGE_LINK =
  /^\/app\/studies\/([0-9.]{1,64})\?series=([0-9.]{1,64})&instance=([0-9.]{1,64})(?:&frame=([1-9][0-9]{0,5}))?$/;

export function parseKeyImageHref(text: string): KeyImage | null {
  const match = KEY_IMAGE_LINK.exec(text);
  if (!match || !uid(match[1]) || !uid(match[2]) || !uid(match[3])) return null;
  return {
    study: match[1],
    series: match[2],
    instance: match[3],
    ...(match[4] ? { frame: Number(match[4]) } : {}),
  };
}

export type ChatPart = { text: string } | { link: KeyImage; href: string };

/** A chat line cut into text and key image links (split on white space, kept as it was). */
export function chatParts(text: string): ChatPart[] {
  const parts: ChatPart[] = [];
  for (const piece of text.split(/(\s+)/)) {
    const link = parseKeyImageHref(piece);
    if (link) {
      parts.push({ link, href: piece });
    } else {
      const last = parts[parts.length - 1];
      if (last && "text" in last) last.text += piece;
      else if (piece) parts.push({ text: piece });
    }
  }
  return parts;
}
