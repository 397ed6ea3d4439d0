/**
 * The badge: a mime renderer for the status display of a durable cell.
 * Rank 0 so it wins over the bundle's text/html fallback in JupyterLab and Notebook 7.
 */
import type { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Widget } from '@lumino/widgets';

import {
  ariaLabel,
  formatAbsolute,
  IStatus,
  MIME_TYPE,
  parseIso,
  parseStatus,
  stateInfo,
  summaryParts,
  timeVerb
} from './format';

/** Relative times ("3 min ago") are refreshed this often while the badge is on screen. */
const TICK_MS = 15000;

export class StatusBadge extends Widget implements IRenderMime.IRenderer {
  private _status: IStatus | null = null;
  private _timer: number | undefined;

  constructor() {
    super();
    this.addClass('jp-DurableBadge-output');
  }

  renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    this._status = parseStatus(model.data[MIME_TYPE]);
    this._render();
    if (this._timer === undefined) {
      this._timer = window.setInterval(() => this._render(), TICK_MS);
    }
    return Promise.resolve();
  }

  dispose(): void {
    if (this._timer !== undefined) {
      window.clearInterval(this._timer);
      this._timer = undefined;
    }
    super.dispose();
  }

  private _render(): void {
    const status = this._status;
    const node = this.node;
    node.textContent = '';
    if (!status) {
      node.dataset.durableState = 'invalid';
      node.textContent = 'durable_nb: unreadable status display (expected a JSON object with a "state").';
      return;
    }
    // Details stay open across the periodic re-render and the running → final update.
    const wasOpen = node.querySelector('details')?.open ?? false;
    node.replaceChildren(renderBadge(status, Date.now(), wasOpen));
    node.dataset.durableState = stateInfo(status.state, status.reason).key;
  }
}

export function renderBadge(status: IStatus, now: number, open: boolean): HTMLElement {
  const info = stateInfo(status.state, status.reason);
  const recordedMs = parseIso(status.recorded_at);
  const details = document.createElement('details');
  details.className = `jp-DurableBadge jp-DurableBadge-${info.tone}`;
  details.dataset.state = info.key;
  details.open = open;

  const summary = document.createElement('summary');
  summary.className = 'jp-DurableBadge-summary';
  summary.setAttribute('aria-label', `${ariaLabel(status, now)}. Press Enter for details.`);
  summary.title = info.description;

  const pill = el('span', 'jp-DurableBadge-state');
  const icon = el('span', 'jp-DurableBadge-icon', info.icon);
  icon.setAttribute('aria-hidden', 'true');
  pill.append(icon, el('span', 'jp-DurableBadge-label', info.label));
  summary.append(pill);
  if (status.cell) {
    summary.append(el('span', 'jp-DurableBadge-cell', status.cell));
  }
  const parts = summaryParts(
    info,
    { whenMs: recordedMs, duration: status.duration_s, saved: status.saved_s, verb: timeVerb(info) },
    now
  );
  for (const part of parts) {
    const span = el('span', 'jp-DurableBadge-fact', part);
    if (recordedMs !== null && part === parts[0] && part.startsWith(timeVerb(info))) {
      span.title = formatAbsolute(recordedMs);
    }
    summary.append(span);
  }
  details.append(summary, renderDetails(status, info.description, recordedMs));
  return details;
}

function renderDetails(status: IStatus, description: string, recordedMs: number | null): HTMLElement {
  const list = el('dl', 'jp-DurableBadge-details') as HTMLDListElement;
  const row = (term: string, value: string | string[]) => {
    const values = Array.isArray(value) ? value : [value];
    if (values.length === 0 || values.every(v => !v)) {
      return;
    }
    list.append(el('dt', '', term));
    for (const v of values) {
      list.append(el('dd', '', v));
    }
  };
  row('what happened', description);
  row('reason', status.reason ?? '');
  row('changed inputs', status.changed ?? []);
  row('problems', status.problems ?? []);
  row(`${timeVerb(stateInfo(status.state, status.reason))} at`, recordedMs === null ? '' : formatAbsolute(recordedMs));
  row('log', status.log ?? '');
  row('execution', status.execution_id === null || status.execution_id === undefined ? '' : `#${status.execution_id}`);
  return list;
}

function el(tag: string, className: string, text?: string): HTMLElement {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

export const rendererFactory: IRenderMime.IRendererFactory = {
  safe: true,
  mimeTypes: [MIME_TYPE],
  createRenderer: () => new StatusBadge()
};

const extension: IRenderMime.IExtension = {
  id: 'durable-nb:status-renderer',
  rendererFactory,
  rank: 0,
  dataType: 'json'
};

export default extension;
