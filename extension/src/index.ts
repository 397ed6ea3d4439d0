/** The front-end plugin: the "Durable log" side panel, the notebook toolbar toggle of the durable mode
 * (toggle.ts) and the kernel session each notebook's badges are compared with (session.ts); the badge is the
 * mime extension in mime.ts. */
import type { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { INotebookTracker } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import { DurableLogPanel } from './panel';
import { trackSessions } from './session';
import { addToggles } from './toggle';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<path class="jp-icon3" fill="#616161" d="M12 3C7 3 4 4.6 4 6.5v11C4 19.4 7 21 12 21s8-1.6 8-3.5v-11C20 4.6 17 3
12 3zm0 2c3.9 0 6 1.1 6 1.5S15.9 8 12 8 6 6.9 6 6.5 8.1 5 12 5zm6 12.5c0 .4-2.1 1.5-6 1.5s-6-1.1-6-1.5V15c1.4.8
3.6 1.2 6 1.2s4.6-.4 6-1.2v2.5zm0-5c0 .4-2.1 1.5-6 1.5s-6-1.1-6-1.5V9c1.4.8 3.6 1.2 6 1.2s4.6-.4 6-1.2v3.5z"/>
</svg>`;

export const logIcon = new LabIcon({ name: 'durable-nb:log', svgstr: ICON_SVG });

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'durable-nb:log-panel',
  description: 'A side panel listing the runs and cell executions of the current notebook\'s durable log.',
  autoStart: true,
  requires: [INotebookTracker],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker) => {
    const panel = new DurableLogPanel(tracker, id => app.shell.activateById(id));
    panel.title.icon = logIcon;
    app.shell.add(panel, 'right', { rank: 900 });
    app.commands.addCommand('durable-nb:open-log', {
      label: 'Show Durable Log',
      execute: () => app.shell.activateById(panel.id)
    });
    addToggles(tracker);
    trackSessions(tracker);
  }
};

export default plugin;
