/**
 * Pure helpers shared by the badge and the side panel: state mapping and time formatting.
 * No DOM and no JupyterLab imports here, so the unit tests run on plain Node.
 */

export const MIME_TYPE = 'application/vnd.durable-nb.status+json';

/** The JSON payload of the status display (docs/architecture.md, "Status display"). */
export interface IStatus {
  version: number;
  state: string;
  cell?: string | null;
  cell_id?: string | null;
  execution_id?: number | null;
  log?: string | null;
  recorded_at?: string | null;
  duration_s?: number | null;
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

/**
 * Map a state from the status display or the log's `executions.state` to what the UI shows.
 * A `recorded` cell with a reason ran again although an earlier recording existed: that is "re-ran".
 */
export function stateInfo(state: string, reason?: string | null): IStateInfo {
  switch (state) {
    case 'replayed':
      return {
        key: 'replayed',
        label: 'replayed',
        icon: '\u21BA',
        tone: 'success',
        description: 'replayed from the durable log instead of recomputing'
      };
    case 'recorded':
    case 'stale':
      if (reason || state === 'stale') {
        return {
          key: 're-ran',
          label: 're-ran',
          icon: '\u21BB',
          tone: 'info',
          description: reason ? `re-ran because ${reason}` : 're-ran: the recording was stale'
        };
      }
      return {
        key: 'recorded',
        label: 'recorded',
        icon: '\u2713',
        tone: 'info',
        description: 'ran and recorded into the durable log'
      };
    case 'running':
      return {
        key: 'running',
        label: 'running',
        icon: '\u25F7',
        tone: 'progress',
        description: 'running; the result will be recorded when the cell finishes'
      };
    case 'failed':
      return {
        key: 'failed',
        label: 'failed',
        icon: '\u2717',
        tone: 'error',
        description: 'the cell raised an error; nothing was recorded for replay'
      };
    case 'crashed':
      return {
        key: 'crashed',
        label: 'crashed',
        icon: '\u2717',
        tone: 'error',
        description: 'the kernel died while this cell was running'
      };
    case 'not-replayable':
      return {
        key: 'not-replayable',
        label: 'not replayable',
        icon: '\u26A0',
        tone: 'warn',
        description: 'ran, but some outputs could not be recorded, so this cell will run again'
      };
    default:
      return {
        key: 'unknown',
        label: state || 'unknown',
        icon: '?',
        tone: 'neutral',
        description: `unknown state ${JSON.stringify(state)}; a newer durable_nb may have written it`
      };
  }
}

/** "0.4 s", "12 s", "40m 12s", "2h 05m", "3d 4h"; '' when there is no number. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) {
    return '';
  }
  if (seconds < 0.05) {
    return '<0.1 s';
  }
  if (seconds < 10) {
    return `${seconds.toFixed(1)} s`;
  }
  const total = Math.round(seconds);
  if (total < 60) {
    return `${total} s`;
  }
  const d = Math.floor(total / 86400);
  const h = Math.floor((total % 86400) / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  if (d > 0) {
    return `${d}d ${h}h`;
  }
  if (h > 0) {
    return `${h}h ${String(m).padStart(2, '0')}m`;
  }
  return `${m}m ${String(s).padStart(2, '0')}s`;
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
    log: str(raw.log),
    recorded_at: str(raw.recorded_at),
    duration_s: num(raw.duration_s),
    saved_s: num(raw.saved_s),
    reason: str(raw.reason),
    changed: strings(raw.changed),
    problems: strings(raw.problems),
    message: str(raw.message)
  };
}

/** The facts shown on one line of a badge or a panel row, in reading order. */
export function summaryParts(
  info: IStateInfo,
  fields: {
    whenMs: number | null;
    duration: number | null | undefined;
    saved: number | null | undefined;
    verb?: string;
  },
  nowMs: number
): string[] {
  const parts: string[] = [];
  const when = formatRelative(fields.whenMs, nowMs);
  if (when) {
    parts.push(fields.verb ? `${fields.verb} ${when}` : when);
  }
  const took = formatDuration(fields.duration);
  if (took) {
    parts.push(`took ${took}`);
  }
  const saved = formatDuration(fields.saved);
  if (saved && fields.saved && fields.saved > 0) {
    parts.push(`saved ${saved}`);
  }
  return parts;
}

/** The accessible name of a badge: everything the eye gets from icon, colour and text. */
export function ariaLabel(status: IStatus, nowMs: number): string {
  const info = stateInfo(status.state, status.reason);
  const who = status.cell ? `Durable cell ${status.cell}` : 'Durable cell';
  const parts = summaryParts(
    info,
    {
      whenMs: parseIso(status.recorded_at),
      duration: status.duration_s,
      saved: status.saved_s,
      verb: timeVerb(info)
    },
    nowMs
  );
  return [`${who}: ${info.label}`, info.description, ...parts].join(', ');
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
