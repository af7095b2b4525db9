// Shapes of the hub's consult API (telehealth/consults/schemas.py).
export interface Participant {
  username: string;
  display_name: string;
  role: "host" | "guest" | "recorder";
  institution_code: string;
}

export interface Consult {
  id: number;
  case_id: number;
  status: "scheduled" | "completed" | "cancelled";
  scheduled_at: string;
  reason: string;
  host: string;
  requested_by: string;
  participants: Participant[];
  notes: string;
  advice: string;
  referral: "none" | "up" | "down";
  referral_institution: string | null;
  referral_reason: string;
  created_at: string;
  closed_at: string | null;
}

export interface IceServer {
  urls: string[];
  username?: string | null;
  credential?: string | null;
}

export interface JoinTicket {
  consult_id: number;
  token: string;
  expires_at: string;
  role: "host" | "guest" | "recorder";
  signaling_url: string;
  ice_servers: IceServer[];
}

export interface ChatLine {
  id: number;
  username: string;
  display_name: string;
  text: string;
  created_at: string;
}

/** A participant as the signalling server describes it (signaling/rooms.py info()). */
export interface PeerInfo {
  peer: string;
  user: number;
  name: string;
  role: string;
  audio: boolean;
  video: boolean;
  screen: boolean;
}
