/**
 * Pure helpers shared by the badge and the side panel: state mapping (from vocabulary.json, generated from
 * durable_nb/vocabulary.py), figures and time formatting.
 * No DOM and no JupyterLab imports here, so the unit tests run on plain Node.
 */

import vocabulary from './vocabulary.json';

export const MIME_TYPE = 'application/vnd.durable-nb.status+json';

/** The JSON payload of the status display (docs/architecture.md, "Status display"). */
export interface IStatus {
  version: number;
  state: string;
  cell?: string | null;
  cell_id?: string | null;
  execution_id?: number | null;
  replayed_from?: number | null;
  log?: string | null;
  /** The kernel process that showed it (a badge of another session describes nothing loaded now). */
  session?: string | null;
  recorded_at?: string | null;
  /** This execution's own time: a replay's is the replay. */
  duration_s?: number | null;
  /** The recorded run's time. */
  original_s?: number | null;
  /** A replay: original_s − duration_s, as the log stores it. */
  saved_s?: number | null;
  reason?: string | null;
  changed?: string[] | null;
  problems?: string[] | null;
  message?: string | null;
}

export type Tone = 'success' | 'info' | 'progress' | 'error' | 'warn' | 'neutral';

export interface IStateInfo {
  /** Stable key used for CSS and for the `data-durable-state` attribute. */
  key: string;
  /** Short word shown next to the icon; the badge must read without colour. */
  label: string;
  /** A glyph whose shape differs per state (colour-blind users, monochrome printouts). */
  icon: string;
  tone: Tone;
  /** One sentence for screen readers and tooltips. */
  description: string;
}

interface ILook {
  label: string;
  icon: string;
  tone: string;
  colour: string;
  description: string;
}

/** durable_nb/vocabulary.py, generated into vocabulary.json: the words the kernel side also uses. */
const LOOKS: Record<string, ILook> = vocabulary.looks;
export const PHRASES: Record<string, string> = vocabulary.phrases;

/**
 * Map a state from the status display or the log's `executions.state` to what the UI shows.
 * A `recorded` cell with a reason ran again although an earlier recording existed: that is "re-ran".
 */
export function stateInfo(state: string, reason?: string | null): IStateInfo {
  const key = state === 'recorded' && reason ? 're-ran' : state;
  const look = Object.prototype.hasOwnProperty.call(LOOKS, key) ? LOOKS[key] : null;
  if (!look) {
    const unknown = vocabulary.unknown;
    return { key: 'unknown', label: state || unknown.label, icon: unknown.icon, tone: 'neutral',
      description: unknown.description };
  }
  return { key, label: look.label, icon: look.icon, tone: look.tone as Tone, description: look.description };
}

/** '350 ms', '4.2 s', '40m 12s', '2h 05m' (vocabulary.fmt_duration); '' when there is no number. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) {
    return '';
  }
  if (seconds < 1) {
    return `${(seconds * 1000).toFixed(0)} ms`;
  }
  if (seconds < 60) {
    return `${seconds.toFixed(1)} s`;
  }
  const total = Math.round(seconds);
  const minutes = Math.floor(total / 60);
  const secs = total % 60;
  if (minutes < 60) {
    return `${minutes}m ${String(secs).padStart(2, '0')}s`;
  }
  return `${Math.floor(minutes / 60)}h ${String(minutes % 60).padStart(2, '0')}m`;
}

/** "just now", "42 s ago", "5 min ago", "3 h ago", "2 d ago", then the date. */
export function formatRelative(thenMs: number | null, nowMs: number): string {
  if (thenMs === null || !Number.isFinite(thenMs)) {
    return '';
  }
  // Clocks of the kernel host and the browser differ a little; never show "in 2 s".
  const ago = Math.max(0, (nowMs - thenMs) / 1000);
  if (ago < 10) {
    return 'just now';
  }
  if (ago < 60) {
    return `${Math.floor(ago)} s ago`;
  }
  if (ago < 3600) {
    return `${Math.floor(ago / 60)} min ago`;
  }
  if (ago < 86400) {
    return `${Math.floor(ago / 3600)} h ago`;
  }
  if (ago < 7 * 86400) {
    return `${Math.floor(ago / 86400)} d ago`;
  }
  return formatAbsolute(thenMs);
}

/** Local "YYYY-MM-DD HH:MM", for tooltips next to the relative time. */
export function formatAbsolute(ms: number): string {
  const t = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, '0');
  return (
    `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} ` +
    `${pad(t.getHours())}:${pad(t.getMinutes())}`
  );
}

/** ISO 8601 text (status display) to epoch ms; null when absent or unreadable. */
export function parseIso(text: string | null | undefined): number | null {
  if (!text) {
    return null;
  }
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? null : ms;
}

/** Unix seconds (the log's REAL columns) to epoch ms. */
export function fromUnixSeconds(seconds: number | null | undefined): number | null {
  return seconds === null || seconds === undefined ? null : seconds * 1000;
}

/** Reads the status payload defensively: a malformed bundle must not break the notebook. */
export function parseStatus(data: unknown): IStatus | null {
  if (!data || typeof data !== 'object' || Array.isArray(data)) {
    return null;
  }
  const raw = data as Record<string, unknown>;
  if (typeof raw.state !== 'string') {
    return null;
  }
  const strings = (v: unknown): string[] =>
    Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
  const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
  const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  return {
    version: num(raw.version) ?? 1,
    state: raw.state,
    cell: str(raw.cell),
    cell_id: str(raw.cell_id),
    execution_id: num(raw.execution_id),
    replayed_from: num(raw.replayed_from),
    log: str(raw.log),
    session: str(raw.session),
    recorded_at: str(raw.recorded_at),
    duration_s: num(raw.duration_s),
    original_s: num(raw.original_s),
    saved_s: num(raw.saved_s),
    reason: str(raw.reason),
    changed: strings(raw.changed),
    problems: strings(raw.problems),
    message: str(raw.message)
  };
}

/** A badge's or panel row's figures, the log's own (docs/schema.md): this execution's time, and for a replay
 * the recorded run's and the time saved. */
export interface IFigures {
  whenMs: number | null;
  duration: number | null | undefined;
  original?: number | null;
  saved?: number | null;
  reason?: string | null;
  verb?: string;
}

/** The facts on one line of a badge or a panel row, in reading order: why it ran (a re-run), when, figures. */
export function summaryParts(info: IStateInfo, fields: IFigures, nowMs: number): string[] {
  const parts: string[] = [];
  if (info.key === 're-ran' && fields.reason) {
    parts.push(fields.reason);
  }
  const when = formatRelative(fields.whenMs, nowMs);
  if (when) {
    parts.push(fields.verb ? `${fields.verb} ${when}` : when);
  }
  parts.push(...figureParts(info, fields));
  return parts;
}

/** 'replayed in 0.4 s', 'saved 3.6 s of 4.0 s' (status.replay_figures), or 'took 4.0 s'. */
export function figureParts(info: IStateInfo, fields: IFigures): string[] {
  const took = formatDuration(fields.duration);
  if (info.key !== 'replayed') {
    return took ? [`took ${took}`] : [];
  }
  const original = formatDuration(fields.original);
  if (!took) {
    return original ? [`recorded run took ${original}`] : [];
  }
  const saved = `saved ${formatDuration(fields.saved ?? 0)}`;
  return [`replayed in ${took}`, original ? `${saved} of ${original}` : saved];
}

/** The figures of a status payload. */
export function statusFigures(status: IStatus, info: IStateInfo): IFigures {
  return {
    whenMs: parseIso(status.recorded_at),
    duration: status.duration_s,
    original: status.original_s,
    saved: status.saved_s,
    reason: status.reason,
    verb: timeVerb(info)
  };
}

/** A badge shown by a kernel process other than the notebook's current one (`current` null: none yet). */
export function isEarlierSession(status: IStatus, current: string | null | undefined): boolean {
  return !status.session || status.session !== current;
}

/** The accessible name of a badge: everything the eye gets from icon, colour and text. */
export function ariaLabel(status: IStatus, nowMs: number, earlier = false): string {
  const info = stateInfo(status.state, status.reason);
  const who = status.cell ? `Durable cell ${status.cell}` : 'Durable cell';
  const parts = summaryParts(info, statusFigures(status, info), nowMs);
  return [`${who}: ${info.label}`, ...parts, ...(earlier ? [PHRASES.earlier_session] : [])].join(', ');
}

/** How the badge introduces its time: a replay shows when the result was first recorded. */
export function timeVerb(info: IStateInfo): string {
  switch (info.key) {
    case 'running':
      return 'started';
    case 'failed':
    case 'crashed':
      return 'ran';
    default:
      return 'recorded';
  }
}
