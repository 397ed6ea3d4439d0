/**
 * The "Durable log" side panel: runs and cell executions of the current notebook's log, read through the
 * server extension (durable_nb/server.py), refreshed as soon as a durable cell of the notebook finishes (its
 * status display reaches a final state).
 */
import { URLExt } from '@jupyterlab/coreutils';
import type { ICodeCellModel } from '@jupyterlab/cells';
import type { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import type { KernelMessage } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { formatAbsolute, fromUnixSeconds, MIME_TYPE, stateInfo, summaryParts } from './format';
import { sessionOf } from './session';

export interface IRun {
  run_id: number;
  started_at: number;
  ended_at: number | null;
  host: string;
  pid: number;
  executions: number;
}

export interface IExecution {
  execution_id: number;
  run_id: number;
  cell_name: string | null;
  cell_id: string | null;
  execution_count: number | null;
  state: string;
  started_at: number;
  duration: number | null;
  original_duration: number | null;
  saved_seconds: number | null;
  reason: string | null;
  error_type: string | null;
  error_message: string | null;
}

export interface ILogResponse {
  log: string;
  exists: boolean;
  runs: IRun[];
  executions: IExecution[];
}

const ENDPOINT = 'durable-nb/api/log';
/** Also poll while visible, slowly: another process (nbclient, a second kernel) may write the same log. */
const POLL_MS = 30000;
/** After a cell finishes: at once (a recording is committed before its final status), and again once a
 * replay's row is written (the kernel defers it by FLUSH_DELAY, 0.5 s, in durable_nb/log/store.py). */
const SOON_MS = 50;
const LATER_MS = 650;
const FINAL_STATES = new Set(['recorded', 'replayed', 'failed', 'not-replayable', 'crashed']);

export class DurableLogPanel extends Widget {
  private _current: NotebookPanel | null = null;
  private _timer: number | undefined;
  private _soon: number | undefined;
  private _later: number | undefined;
  private _stale = true;
  private _generation = 0;
  private readonly _header = document.createElement('div');
  private readonly _body = document.createElement('div');

  constructor(
    private readonly _tracker: INotebookTracker,
    private readonly _activate: (id: string) => void
  ) {
    super();
    this.id = 'durable-nb-log';
    this.addClass('jp-DurableLog');
    this.title.caption = 'Durable log: recorded and replayed cells of this notebook';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'Durable log');
    this._header.className = 'jp-DurableLog-header';
    this._body.className = 'jp-DurableLog-body';
    this._body.setAttribute('aria-live', 'polite');
    this.node.append(this._header, this._body);
    _tracker.currentChanged.connect(this._follow, this);
    this._follow();
  }

  dispose(): void {
    this._stopPolling();
    window.clearTimeout(this._soon);
    window.clearTimeout(this._later);
    super.dispose();
  }

  /** Fetch and render now; skipped (and remembered) while hidden. */
  async refresh(): Promise<void> {
    if (!this.isVisible) {
      this._stale = true;
      return;
    }
    this._stale = false;
    const panel = this._current;
    const generation = ++this._generation;
    this._renderHeader(panel);
    if (!panel) {
      this._message('Open a notebook to see its durable log.');
      return;
    }
    try {
      const data = await fetchLog(panel.context.path, logFromOutputs(panel));
      if (generation === this._generation) {
        this._renderLog(panel, data);
      }
    } catch (err) {
      if (generation === this._generation) {
        this._message(`Could not read the durable log: ${(err as Error).message}`, true);
      }
    }
  }

  protected onAfterShow(): void {
    if (this._stale) {
      void this.refresh();
    }
    this._startPolling();
  }

  protected onAfterHide(): void {
    this._stopPolling();
  }

  private _startPolling(): void {
    if (this._timer === undefined) {
      this._timer = window.setInterval(() => void this.refresh(), POLL_MS);
    }
  }

  private _stopPolling(): void {
    window.clearInterval(this._timer);
    this._timer = undefined;
  }

  private _follow(): void {
    this._current?.sessionContext.iopubMessage.disconnect(this._onMessage, this);
    this._current = this._tracker.currentWidget;
    this._current?.sessionContext.iopubMessage.connect(this._onMessage, this);
    void this.refresh();
  }

  /** A durable cell finished: its status display reached a final state. */
  private _onMessage(_: unknown, msg: KernelMessage.IMessage): void {
    if (sessionOf(msg) === null) {
      return;
    }
    const status = (msg.content as { data: Record<string, { state?: unknown; duration_s?: unknown }> }).data[
      MIME_TYPE
    ];
    // A replay's first display has no figures yet; its update with them is the one that finishes it.
    const final = FINAL_STATES.has(String(status.state)) && typeof status.duration_s === 'number';
    if (!final) {
      return;
    }
    // At most one immediate refresh per burst of cells (Run All), and one after the last cell's replay row.
    if (this._soon === undefined) {
      this._soon = window.setTimeout(() => {
        this._soon = undefined;
        void this.refresh();
      }, SOON_MS);
    }
    window.clearTimeout(this._later);
    this._later = window.setTimeout(() => void this.refresh(), LATER_MS);
  }

  private _renderHeader(panel: NotebookPanel | null): void {
    const title = document.createElement('h2');
    title.className = 'jp-DurableLog-title';
    title.textContent = 'Durable log';
    const button = document.createElement('button');
    button.className = 'jp-DurableLog-refresh jp-mod-styled';
    button.textContent = '\u21BB Refresh';
    button.setAttribute('aria-label', 'Refresh the durable log');
    button.onclick = () => void this.refresh();
    const notebook = document.createElement('div');
    notebook.className = 'jp-DurableLog-notebook';
    notebook.textContent = panel ? panel.context.path : '';
    this._header.replaceChildren(title, button, notebook);
  }

  private _message(text: string, isError = false): void {
    const p = document.createElement('p');
    p.className = isError ? 'jp-DurableLog-error' : 'jp-DurableLog-empty';
    if (isError) {
      p.setAttribute('role', 'alert');
    }
    p.textContent = text;
    this._body.replaceChildren(p);
  }

  private _renderLog(panel: NotebookPanel, data: ILogResponse): void {
    if (!data.exists) {
      this._message(`No durable log yet (${data.log}). Run a %%durable cell to create it.`);
      return;
    }
    const now = Date.now();
    const byRun = new Map<number, IExecution[]>();
    for (const e of data.executions) {
      byRun.set(e.run_id, [...(byRun.get(e.run_id) ?? []), e]);
    }
    const path = document.createElement('div');
    path.className = 'jp-DurableLog-path';
    path.textContent = data.log;
    path.title = 'the log file, relative to the server root';
    const sections = data.runs
      .filter(r => byRun.has(r.run_id))
      .map(run => this._renderRun(panel, run, byRun.get(run.run_id) ?? [], now));
    if (sections.length === 0) {
      this._body.replaceChildren(path);
      this._message(`The log ${data.log} has no cell executions yet.`);
      return;
    }
    this._body.replaceChildren(path, ...sections);
  }

  private _renderRun(panel: NotebookPanel, run: IRun, executions: IExecution[], now: number): HTMLElement {
    const section = document.createElement('section');
    section.className = 'jp-DurableLog-run';
    const heading = document.createElement('h3');
    const started = fromUnixSeconds(run.started_at);
    const when = summaryParts(stateInfo('recorded'), { whenMs: started, duration: null }, now);
    heading.textContent = [`Run ${run.run_id}`, ...when, `host ${run.host}`].join(' \u00B7 ');
    heading.title =
      `a kernel session: started ${started === null ? '?' : formatAbsolute(started)} on host ${run.host}, ` +
      `process ${run.pid}`;
    const list = document.createElement('ul');
    for (const e of executions) {
      const item = document.createElement('li');
      item.append(this._renderExecution(panel, e, now));
      list.append(item);
    }
    section.append(heading, list);
    return section;
  }

  private _renderExecution(panel: NotebookPanel, e: IExecution, now: number): HTMLElement {
    const info = stateInfo(e.state, e.reason);
    const button = document.createElement('button');
    button.className = `jp-DurableLog-exec jp-DurableBadge-${info.tone}`;
    button.dataset.state = info.key;
    button.dataset.cellId = e.cell_id ?? '';
    button.dataset.executionId = String(e.execution_id);
    const name = e.cell_name ?? (e.execution_count !== null ? `cell [${e.execution_count}]` : 'cell');
    const parts = summaryParts(
      info,
      {
        whenMs: fromUnixSeconds(e.started_at),
        duration: e.duration,
        original: e.original_duration,
        saved: e.saved_seconds,
        reason: e.reason
      },
      now
    );
    const icon = document.createElement('span');
    icon.className = 'jp-DurableBadge-icon';
    icon.setAttribute('aria-hidden', 'true');
    icon.textContent = info.icon;
    const label = document.createElement('span');
    label.className = 'jp-DurableLog-state';
    label.textContent = info.label;
    const what = document.createElement('span');
    what.className = 'jp-DurableLog-cell';
    what.textContent = name;
    const facts = document.createElement('span');
    facts.className = 'jp-DurableLog-facts';
    // One fact never breaks across lines ("saved 3.5 s" stays whole); the list wraps between facts.
    parts.forEach((part, n) => {
      const fact = document.createElement('span');
      fact.className = 'jp-DurableLog-fact';
      fact.textContent = n < parts.length - 1 ? `${part} \u00B7` : part;
      facts.append(fact);
    });
    button.append(icon, label, what, facts);
    const problem = e.error_type ? `${e.error_type}: ${e.error_message ?? ''}` : info.description;
    button.title = `${problem}. Click to scroll to the cell.`;
    button.setAttribute('aria-label', `${name}: ${info.label}, ${parts.join(', ')}. Go to the cell.`);
    button.onclick = () => this._goToCell(panel, e.cell_id, button);
    return button;
  }

  private _goToCell(panel: NotebookPanel, cellId: string | null, button: HTMLElement): void {
    const notebook = panel.content;
    const index = cellId ? notebook.widgets.findIndex(c => c.model.id === cellId) : -1;
    if (index < 0) {
      button.title = 'This cell is no longer in the notebook (deleted, or the log belongs to a copy).';
      button.classList.add('jp-mod-missing');
      return;
    }
    const cell = notebook.widgets[index];
    notebook.activeCellIndex = index;
    notebook.deselectAll();
    this._activate(panel.id);
    // Select the cell in command mode: the next keystrokes must not edit its code. Activating the notebook
    // focuses the active cell's editor, so command mode is set after that, with the focus on the notebook.
    const command = () => {
      notebook.mode = 'command';
      notebook.node.focus();
    };
    command();
    window.requestAnimationFrame(command);
    void notebook.scrollToCell(cell, 'center').then(() => {
      command();
      cell.addClass('jp-DurableLog-flash');
      window.setTimeout(() => cell.removeClass('jp-DurableLog-flash'), 1500);
    });
  }
}

/** The log path a status display in this notebook announced (it wins over the default next to it). */
export function logFromOutputs(panel: NotebookPanel): string | null {
  const cells = panel.content.model?.cells;
  let found: string | null = null;
  if (!cells) {
    return null;
  }
  for (const cell of cells) {
    if (cell.type !== 'code') {
      continue;
    }
    for (const output of (cell as ICodeCellModel).outputs.toJSON()) {
      const data = (output as { data?: Record<string, unknown> }).data;
      const status = data?.[MIME_TYPE] as { log?: unknown } | undefined;
      if (typeof status?.log === 'string') {
        found = status.log;
      }
    }
  }
  return found;
}

export async function fetchLog(notebook: string, log: string | null): Promise<ILogResponse> {
  const settings = ServerConnection.makeSettings();
  const query: Record<string, string> = { notebook };
  if (log) {
    query.log = log;
  }
  const url = URLExt.join(settings.baseUrl, ENDPOINT) + URLExt.objectToQueryString(query);
  const response = await ServerConnection.makeRequest(url, {}, settings);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (body as { message?: string }).message || response.statusText;
    throw new Error(`${response.status} ${message}`);
  }
  return body as ILogResponse;
}
