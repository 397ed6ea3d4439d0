/**
 * The badge: a mime renderer for the status display of a durable cell.
 * Rank 0 so it wins over the bundle's text/html fallback in JupyterLab and Notebook 7.
 */
import type { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Widget } from '@lumino/widgets';

import {
  ariaLabel,
  formatAbsolute,
  formatDuration,
  IFigures,
  IStateInfo,
  IStatus,
  MIME_TYPE,
  parseStatus,
  PHRASES,
  stateInfo,
  statusFigures,
  summaryParts,
  timeVerb
} from './format';
import { markBadge } from './session';

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

  protected onAfterAttach(): void {
    // Only now is the badge inside its notebook, whose current kernel session says whether it is current.
    this._render();
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
    markBadge(node);
  }
}

export function renderBadge(status: IStatus, now: number, open: boolean): HTMLElement {
  const info = stateInfo(status.state, status.reason);
  const figures = statusFigures(status, info);
  const details = document.createElement('details');
  details.className = `jp-DurableBadge jp-DurableBadge-${info.tone}`;
  details.dataset.state = info.key;
  details.dataset.session = status.session ?? '';
  details.open = open;

  const summary = document.createElement('summary');
  summary.className = 'jp-DurableBadge-summary';
  summary.dataset.label = `${ariaLabel(status, now)}. Press Enter for details.`;
  summary.setAttribute('aria-label', summary.dataset.label);
  summary.title = info.description;

  const pill = el('span', 'jp-DurableBadge-state');
  const icon = el('span', 'jp-DurableBadge-icon', info.icon);
  icon.setAttribute('aria-hidden', 'true');
  pill.append(icon, el('span', 'jp-DurableBadge-label', info.label));
  summary.append(pill);
  if (status.cell) {
    summary.append(el('span', 'jp-DurableBadge-cell', status.cell));
  }
  for (const part of summaryParts(info, figures, now)) {
    const span = el('span', 'jp-DurableBadge-fact', part);
    if (figures.whenMs !== null && figures.verb && part.startsWith(`${figures.verb} `)) {
      span.title = formatAbsolute(figures.whenMs);
    }
    summary.append(span);
  }
  const earlier = el('span', 'jp-DurableBadge-earlier', PHRASES.earlier_session);
  earlier.title = PHRASES.earlier_session_title;
  summary.append(earlier);
  details.append(summary, renderDetails(status, info, figures));
  return details;
}

/** Each fact once, under the label that says what it is. */
function renderDetails(status: IStatus, info: IStateInfo, figures: IFigures): HTMLElement {
  const list = el('dl', 'jp-DurableBadge-details') as HTMLDListElement;
  const row = (term: string, value: string | string[]) => {
    const values = (Array.isArray(value) ? value : [value]).filter(v => v);
    if (values.length === 0) {
      return;
    }
    list.append(el('dt', '', term));
    for (const v of values) {
      list.append(el('dd', '', v));
    }
  };
  row('what happened', info.description);
  // A re-run's reason is the list of what changed; a replay's is what differs from where it was recorded.
  const reasons = status.changed && status.changed.length ? status.changed : [status.reason ?? ''];
  row(info.key === 'replayed' ? 'note' : 'why it ran', reasons);
  row('problems', status.problems ?? []);
  if (info.key === 'replayed') {
    row('replay took', formatDuration(figures.duration));
    row('recorded run took', formatDuration(figures.original));
    row('time saved', figures.duration === null || figures.duration === undefined ? ''
      : formatDuration(figures.saved ?? 0));
  } else {
    row('took', formatDuration(figures.duration));
  }
  row(`${timeVerb(info)} at`, figures.whenMs === null ? '' : formatAbsolute(figures.whenMs));
  row('log', status.log ?? '');
  const id = (n: number | null | undefined) => (n === null || n === undefined ? '' : `#${n}`);
  row('execution', id(status.execution_id));
  row('replayed from', id(status.replayed_from));
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
