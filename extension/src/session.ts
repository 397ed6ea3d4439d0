/**
 * Which badges belong to the notebook's current kernel session.
 *
 * Every status display names the kernel process that showed it (`session`). A badge of another one (a saved
 * notebook reopened, a restarted kernel) describes results nothing in the current kernel holds, so it is dimmed
 * and says "from an earlier session". The notebook's current session is learned from the badges its kernel
 * sends over IOPub, and, when a kernel is connected (a reloaded page), by asking it with a silent
 * user_expressions request that reads the token only if durable_nb is already imported there (it imports
 * nothing). It is kept on the notebook's node so that the mime renderer, which sees no kernel, can read it.
 */
import type { NotebookPanel, INotebookTracker } from '@jupyterlab/notebook';
import type { Kernel, KernelMessage } from '@jupyterlab/services';

import { MIME_TYPE, PHRASES } from './format';

const PANEL = '.jp-NotebookPanel';
const EXPRESSION =
  "getattr(__import__('sys').modules.get('durable_nb.status'), 'SESSION', '')";

/** Mark one rendered badge (the renderer's node) as current or from an earlier session. */
export function markBadge(output: HTMLElement): void {
  const panel = output.closest<HTMLElement>(PANEL);
  const badge = output.querySelector<HTMLElement>('.jp-DurableBadge');
  if (!panel || !badge) {
    return; // outside a notebook (a console, an output view): no session to compare with
  }
  const session = badge.dataset.session ?? '';
  const earlier = session === '' || session !== panel.dataset.durableSession;
  badge.toggleAttribute('data-earlier-session', earlier);
  const summary = badge.querySelector<HTMLElement>('.jp-DurableBadge-summary');
  if (summary?.dataset.label) {
    summary.setAttribute('aria-label', earlier ? `${summary.dataset.label} ${PHRASES.earlier_session}.`
      : summary.dataset.label);
  }
}

function markAll(panel: HTMLElement): void {
  panel.querySelectorAll<HTMLElement>('.jp-DurableBadge-output').forEach(markBadge);
}

function setSession(panel: NotebookPanel, session: string | null): void {
  if (session) {
    panel.node.dataset.durableSession = session;
  } else {
    delete panel.node.dataset.durableSession;
  }
  markAll(panel.node);
}

/** The session token in a status display message, if it is one. */
export function sessionOf(msg: KernelMessage.IMessage): string | null {
  const kind = msg.header.msg_type;
  if (kind !== 'display_data' && kind !== 'update_display_data') {
    return null;
  }
  const data = (msg.content as { data?: Record<string, unknown> }).data;
  const session = (data?.[MIME_TYPE] as { session?: unknown } | undefined)?.session;
  return typeof session === 'string' && session ? session : null;
}

async function ask(panel: NotebookPanel): Promise<void> {
  const kernel = panel.sessionContext.session?.kernel;
  if (!kernel) {
    return;
  }
  const future = kernel.requestExecute({
    code: '',
    silent: true,
    store_history: false,
    user_expressions: { session: EXPRESSION }
  });
  try {
    const reply = await future.done;
    const content = reply.content as KernelMessage.IExecuteReply;
    const answer = content.status === 'ok' ? content.user_expressions?.session : undefined;
    const text = (answer as { data?: { 'text/plain'?: string } } | undefined)?.data?.['text/plain'] ?? '';
    const token = text.replace(/^'(.*)'$/, '$1');
    // Empty: durable_nb is not loaded in this kernel yet, so every badge is from an earlier session.
    if (token && panel.sessionContext.session?.kernel === kernel) {
      setSession(panel, token);
    }
  } catch {
    // A kernel that died or restarted meanwhile: its badges will say which session they belong to.
  }
}

export function trackSessions(tracker: INotebookTracker): void {
  tracker.widgetAdded.connect((_: unknown, panel: NotebookPanel) => {
    const context = panel.sessionContext;
    context.iopubMessage.connect((_: unknown, msg: KernelMessage.IMessage) => {
      const session = sessionOf(msg);
      if (session && session !== panel.node.dataset.durableSession) {
        setSession(panel, session);
      }
    });
    context.statusChanged.connect((_: unknown, status: Kernel.Status) => {
      if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
        setSession(panel, null);
      }
    });
    context.kernelChanged.connect(() => {
      setSession(panel, null);
      void context.ready.then(() => ask(panel));
    });
    void context.ready.then(() => ask(panel));
  });
}
