/**
 * The notebook toolbar toggle for durable_nb's "durable by default" mode (`%durable on` / `%durable off`), and
 * the marker on cells tagged `durable-off`.
 *
 * The mode is saved in the notebook's metadata (`durable_nb.all_cells`) and sent to the kernel as a silent
 * execute request on a click, whenever the notebook gets a kernel, and when its kernel restarts (queued before
 * the cells of "Restart Kernel and Run All"). The kernel sees each cell's tags: JupyterLab sends the cell's
 * metadata with every execute_request.
 */
import type { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import type { Kernel } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

export const METADATA_KEY = 'durable_nb';
export const OFF_TAG = 'durable-off';

/** The silent code that sets the mode in the kernel (loading the IPython extension if needed). */
export function modeCode(on: boolean): string {
  return `%load_ext durable_nb\n%durable ${on ? 'on' : 'off'}`;
}

export class DurableModeToggle extends Widget {
  private _problem = '';

  constructor(private readonly _panel: NotebookPanel) {
    super({ node: document.createElement('button') });
    this.addClass('jp-DurableMode');
    this.addClass('jp-ToolbarButtonComponent');
    this.node.setAttribute('type', 'button');
    this.node.onclick = () => this.toggle();
    const session = _panel.sessionContext;
    session.kernelChanged.connect(() => this.apply(), this);
    session.statusChanged.connect((_: unknown, status: Kernel.Status) => {
      if (status === 'restarting' || status === 'autorestarting') {
        // After the restart has cleared the connection's queue, before "Run All" queues the cells.
        void Promise.resolve().then(() => this.apply());
      }
    }, this);
    void _panel.context.ready.then(() => {
      this.render();
      this.apply();
    });
    this.render();
  }

  get on(): boolean {
    const meta = this._panel.model?.getMetadata(METADATA_KEY) as { all_cells?: unknown } | undefined;
    return meta?.all_cells === true;
  }

  toggle(): void {
    const model = this._panel.model;
    if (!model) {
      return;
    }
    const meta = (model.getMetadata(METADATA_KEY) as Record<string, unknown> | undefined) ?? {};
    model.setMetadata(METADATA_KEY, { ...meta, all_cells: !this.on });
    this._problem = '';
    this.render();
    this.apply(true);
  }

  /** Tell the kernel; unless `always`, only when the mode is on (off is the kernel's default). */
  apply(always = false): void {
    const kernel = this._panel.sessionContext.session?.kernel;
    if (!kernel || (!always && !this.on)) {
      return;
    }
    const future = kernel.requestExecute({ code: modeCode(this.on), silent: true, store_history: false });
    future.done
      .then(reply => {
        const content = reply.content as { status: string; ename?: string; evalue?: string };
        this._problem = content.status === 'ok' ? '' : `${content.ename ?? 'error'}: ${content.evalue ?? ''}`;
        this.render();
      })
      .catch(() => undefined);
  }

  render(): void {
    const on = this.on;
    const node = this.node;
    node.textContent = on ? '\u21BA Durable: on' : 'Durable: off';
    node.dataset.durableMode = on ? 'on' : 'off';
    node.setAttribute('aria-pressed', String(on));
    node.classList.toggle('jp-mod-active', on);
    node.classList.toggle('jp-mod-error', this._problem !== '');
    node.title = this._problem
      ? `durable_nb could not set the mode in this kernel (${this._problem}); is durable_nb installed there?`
      : on
        ? 'Every code cell is durable (%durable on). Cells starting with a magic or !, and cells tagged ' +
          `${OFF_TAG}, run plainly. Click to turn off.`
        : 'Only %%durable cells are durable. Click to make every code cell durable (%durable on).';
  }
}

/** Mark the cells tagged durable-off (data-durable-off on the cell node; the CSS shows a label). */
export function markOffCells(panel: NotebookPanel): void {
  for (const cell of panel.content.widgets) {
    const tags = cell.model.getMetadata('tags');
    const off = Array.isArray(tags) && tags.includes(OFF_TAG);
    if (off) {
      cell.node.dataset.durableOff = 'true';
      cell.node.title = `tagged ${OFF_TAG}: never durable`;
    } else if (cell.node.dataset.durableOff) {
      delete cell.node.dataset.durableOff;
      cell.node.removeAttribute('title');
    }
  }
}

export function addToggles(tracker: INotebookTracker): void {
  tracker.widgetAdded.connect((_: unknown, panel: NotebookPanel) => {
    panel.toolbar.insertItem(10, 'durableMode', new DurableModeToggle(panel));
    void panel.context.ready.then(() => {
      markOffCells(panel);
      panel.model?.contentChanged.connect(() => markOffCells(panel));
      panel.content.modelChanged.connect(() => markOffCells(panel));
    });
  });
}
