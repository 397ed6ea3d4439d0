"""The extension in a real browser: Debian's Chromium (Playwright, never a downloaded browser) against a real
`jupyter lab` / `jupyter notebook` on 127.0.0.1 with a token, in a fresh folder per test.

Screenshots go to test-output/ at the repository root.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import nbformat
import pytest
from jupyterproc import Jupyter, running_jupyter
from playwright.sync_api import Browser, Page, expect, sync_playwright

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
BADGE = ".jp-OutputArea-output[data-durable-state]"
EARLIER = ".jp-DurableBadge[data-earlier-session]"
PANEL_ROWS = ".jp-DurableLog-exec"
# Generous: the first kernel start and the first webpack chunk loads are slow on a shared 2-core machine.
SLOW_MS = 60000
expect.set_options(timeout=SLOW_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make test` (it apt-installs chromium)."
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(SLOW_MS)
    try:
        yield page
    finally:
        # What the page showed at the end: the first thing to look at when a test fails.
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT / f"{request.node.name}-last.png"))
        context.close()


def quiet_settings(logs: Path, theme: str = "JupyterLab Light") -> None:
    """No news / update toast over the notebook (JUPYTERLAB_SETTINGS_DIR is per test, see jupyterproc)."""
    path = logs / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # Windowing off: cells scrolled out of view stay in the DOM, so every badge can be counted.
    tracker = logs / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    themes = logs / "settings" / "@jupyterlab" / "apputils-extension" / "themes.jupyterlab-settings"
    themes.write_text(json.dumps({"theme": theme}))


def write_notebook(path: Path) -> None:
    """Two durable cells separated by a tall markdown cell, so the panel has somewhere to scroll to."""
    nb = nbformat.v4.new_notebook()
    filler = "\n\n".join(f"Paragraph {i} between the two durable cells." for i in range(40))
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext durable_nb", id="c-load"),
        nbformat.v4.new_code_cell("%%durable --name prep\nimport time\ntime.sleep(1)\nx = 21", id="c-prep"),
        nbformat.v4.new_markdown_cell(filler, id="c-filler"),
        nbformat.v4.new_code_cell("%%durable --name double\ny = x * 2\nprint(y)", id="c-double"),
    ]
    save_with_kernel(nb, path)


def save_with_kernel(nb: nbformat.NotebookNode, path: Path) -> None:
    """With its kernelspec, so opening the notebook starts a kernel without a "Select Kernel" dialog."""
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)


def open_notebook(page: Page, jupyter: Jupyter, url_path: str) -> None:
    page.goto(f"{jupyter.url}{url_path}?reset&token={jupyter.token}")
    expect(page.locator(".jp-Notebook")).to_be_visible()
    # The toolbar's indicator says "idle" before the page has a kernel too (then runs ask "Select Kernel"):
    # wait for the server to list the page's session with an idle kernel, then for the page to connect.
    deadline = time.monotonic() + SLOW_MS / 1000
    while not any(s.get("kernel", {}).get("execution_state") == "idle" for s in sessions(jupyter)):
        assert time.monotonic() < deadline, f"no kernel started for the notebook; see {jupyter.log_file}"
        time.sleep(0.2)
    expect(page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')).to_be_attached()
    # Make the notebook the current widget, else its menu commands are disabled.
    page.locator(".jp-Cell .jp-InputPrompt").first.click()


def sessions(jupyter: Jupyter) -> list[dict[str, Any]]:
    status, body = jupyter.get("/api/sessions")
    assert status == 200, body
    return cast(list[dict[str, Any]], body)


def menu(page: Page, top: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{top}$")).click()
    entry = page.locator(".lm-Menu-item:not(.lm-mod-disabled)", has_text=re.compile(f"^{re.escape(item)}"))
    entry.first.click()


def restart_and_run_all(page: Page) -> None:
    menu(page, "Kernel", "Restart Kernel and Run All Cells")
    page.locator(".jp-Dialog .jp-mod-accept").click()


def wait_for_badges(page: Page, *states: str) -> None:
    badges = page.locator(BADGE)
    expect(badges).to_have_count(len(states))
    for n, state in enumerate(states):
        expect(badges.nth(n)).to_have_attribute("data-durable-state", state)


def test_lab_badges_replay_and_panel_scrolls_to_cell(tmp_path: Path, page: Page) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / "nb.ipynb")
    quiet_settings(tmp_path / "logs")
    with running_jupyter("lab", root, tmp_path / "logs") as jupyter:
        open_notebook(page, jupyter, "/lab/tree/nb.ipynb")
        menu(page, "Run", "Run All Cells")
        wait_for_badges(page, "recorded", "recorded")
        assert (root / "nb.durable.db").is_file(), "the log sits next to the notebook by default"

        restart_and_run_all(page)
        wait_for_badges(page, "replayed", "replayed")
        badge = page.locator(BADGE).first.locator("summary")
        expect(badge).to_contain_text("replayed")
        expect(badge).to_contain_text("prep")
        expect(badge).to_have_attribute("aria-label", re.compile(r"Durable cell prep: replayed.*saved"))
        # Keyboard: the badge takes focus and Enter opens its details (log path among them).
        badge.focus()
        page.keyboard.press("Enter")
        expect(page.locator(BADGE).first.locator(".jp-DurableBadge-details")).to_contain_text("nb.durable.db")
        page.screenshot(path=str(OUTPUT / "lab-badges.png"))

        page.locator('.jp-SideBar li[data-id="durable-nb-log"]').click()
        rows = page.locator(".jp-DurableLog-exec")
        expect(rows).to_have_count(4)
        states = [rows.nth(i).get_attribute("data-state") for i in range(4)]
        assert sorted(states) == ["recorded", "recorded", "replayed", "replayed"], states
        expect(page.locator(".jp-DurableLog-run")).to_have_count(2)

        target = page.locator('.jp-DurableLog-exec[data-state="replayed"][data-cell-id="c-double"]')
        expect(target).to_have_count(1)
        double_cell = page.locator(".jp-Cell", has_text="%%durable --name double")
        page.locator(".jp-Cell").first.click()
        page.keyboard.press("Escape")
        page.keyboard.press("Control+Home")
        expect(double_cell).not_to_be_in_viewport()
        target.click()
        expect(double_cell).to_be_in_viewport()
        expect(double_cell).to_have_class(re.compile(r"\bjp-mod-active\b"))
        page.screenshot(path=str(OUTPUT / "lab-panel.png"))


def test_notebook7_badges_replay(tmp_path: Path, page: Page) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / "nb.ipynb")
    quiet_settings(tmp_path / "logs")
    with running_jupyter("notebook", root, tmp_path / "logs") as jupyter:
        open_notebook(page, jupyter, "/notebooks/nb.ipynb")
        menu(page, "Run", "Run All Cells")
        wait_for_badges(page, "recorded", "recorded")
        restart_and_run_all(page)
        wait_for_badges(page, "replayed", "replayed")
        expect(page.locator(BADGE).nth(1)).to_contain_text("double")
        page.screenshot(path=str(OUTPUT / "notebook7-badges.png"))


STATES_CELL = """
import time
from IPython.display import display
from durable_nb.status import SESSION  # this kernel's: the badges below are current, not an earlier session's
MIME = "application/vnd.durable-nb.status+json"
base = {"version": 1, "cell_id": "x", "execution_id": 7, "log": "/data/nb.durable.db", "session": SESSION,
        "recorded_at": "2026-01-01T10:00:00+00:00", "duration_s": 2412.0}
def show(**kw):
    payload = {**base, **kw}
    return {MIME: payload, "text/plain": "durable: " + payload["state"],
            "text/html": "<b class='html-fallback'>html fallback</b>"}
display(show(state="replayed", cell="load", duration_s=0.35, original_s=2412.0, saved_s=2411.65), raw=True)
display(show(state="recorded", cell="train", reason="input df changed", changed=["input df"]), raw=True)
display(show(state="failed", cell="score", problems=["ValueError: bad split"]), raw=True)
display(show(state="not-replayable", cell="conn", problems=["variable conn: a socket cannot be stored"]),
        raw=True)
display(show(state="archived", cell=None), raw=True)
handle = display(show(state="running", cell="slow", recorded_at=None, duration_s=None), raw=True,
                 display_id=True)
time.sleep(3)
handle.update(show(state="recorded", cell="slow"), raw=True)
"""


def test_renderer_states_dark_theme_and_update_in_place(tmp_path: Path, page: Page) -> None:
    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(STATES_CELL, id="c-states")]
    save_with_kernel(nb, root / "states.ipynb")
    quiet_settings(tmp_path / "logs", theme="JupyterLab Dark")
    with running_jupyter("lab", root, tmp_path / "logs") as jupyter:
        open_notebook(page, jupyter, "/lab/tree/states.ipynb")
        menu(page, "Run", "Run All Cells")
        badges = page.locator(BADGE)
        expect(badges.last).to_have_attribute("data-durable-state", "running")
        wait_for_badges(page, "replayed", "re-ran", "failed", "not-replayable", "unknown", "recorded")
        expect(page.locator(".html-fallback")).to_have_count(0)  # rank 0 beats the text/html fallback
        expect(badges.nth(1)).to_contain_text("re-ran")
        expect(badges.nth(3)).to_contain_text("not replayable")
        expect(badges.nth(4)).to_contain_text("archived")
        page.locator(".jp-DurableBadge-summary").nth(2).click()
        expect(badges.nth(2).locator(".jp-DurableBadge-details")).to_contain_text("ValueError: bad split")
        page.locator(".jp-DurableBadge-summary").nth(1).click()
        expect(badges.nth(1).locator(".jp-DurableBadge-details")).to_contain_text("input df")
        colours = badges.evaluate_all(
            "els => els.map(e => getComputedStyle(e.querySelector('.jp-DurableBadge-icon')).color)")
        assert len(set(colours[:4])) == 4, f"each state has its own theme colour: {colours}"
        expect(page.locator(EARLIER)).to_have_count(0)
        expect(badges.first).not_to_contain_text("from an earlier session", use_inner_text=True)
        expect(badges.first).to_contain_text("replayed in 350 ms")
        expect(badges.first).to_contain_text("saved 40m 12s of 40m 12s")
        page.screenshot(path=str(OUTPUT / "lab-states-dark.png"))


def test_lab_toolbar_toggle_makes_every_cell_durable(tmp_path: Path, page: Page) -> None:
    """The toolbar toggle sets %durable on in the kernel (also after a restart), its state is visible, the
    durable-off tag reaches the kernel (JupyterLab sends cell metadata) and is shown on the cell."""
    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    tagged = nbformat.v4.new_code_cell("y = x * 2\nprint('tagged', y)", id="c-tagged")
    tagged.metadata["tags"] = ["durable-off"]
    nb.cells = [nbformat.v4.new_code_cell("import time\ntime.sleep(0.5)\nx = 21\nprint('x', x)", id="c-x"), tagged,
                nbformat.v4.new_code_cell("%%durable --off\nz = 3", id="c-off")]
    save_with_kernel(nb, root / "mode.ipynb")
    quiet_settings(tmp_path / "logs")
    with running_jupyter("lab", root, tmp_path / "logs") as jupyter:
        open_notebook(page, jupyter, "/lab/tree/mode.ipynb")
        toggle = page.locator(".jp-DurableMode")
        expect(toggle).to_have_attribute("data-durable-mode", "off")
        expect(toggle).to_have_attribute("aria-pressed", "false")
        expect(page.locator(".jp-Cell[data-durable-off]")).to_have_count(1)
        toggle.click()
        expect(toggle).to_have_attribute("data-durable-mode", "on")
        expect(toggle).to_have_text(re.compile("Durable: on"))
        menu(page, "Run", "Run All Cells")
        wait_for_badges(page, "recorded")
        expect(page.locator(".jp-Cell", has_text="tagged 42")).to_have_count(1)
        page.screenshot(path=str(OUTPUT / "lab-durable-toggle-on.png"))

        restart_and_run_all(page)  # the mode is re-applied to the new kernel before the cells run
        wait_for_badges(page, "replayed")
        expect(page.locator(BADGE).first.locator("summary")).to_contain_text("replayed")
        page.screenshot(path=str(OUTPUT / "lab-durable-toggle-replayed.png"))

        toggle.click()
        expect(toggle).to_have_attribute("data-durable-mode", "off")
        restart_and_run_all(page)
        expect(page.locator(".jp-Cell", has_text="tagged 42")).to_have_count(1)
        expect(page.locator(BADGE)).to_have_count(0)
    assert (root / "mode.durable.db").is_file()


# -- issue 19: what the user sees ------------------------------------------------------------------------------



def write_ui_notebook(path: Path) -> None:
    """A slow durable cell, a plain input cell, and a durable cell that reads that input."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext durable_nb", id="c-load"),
        nbformat.v4.new_code_cell("%%durable --name prep\nimport time\ntime.sleep(1.2)\nx = 21", id="c-prep"),
        nbformat.v4.new_code_cell("n = 2", id="c-n"),
        nbformat.v4.new_code_cell("%%durable --name double\ny = x * n\nprint(y)", id="c-double"),
    ]
    save_with_kernel(nb, path)


def open_panel(page: Page) -> None:
    page.locator('.jp-SideBar li[data-id="durable-nb-log"]').click()
    expect(page.locator(".jp-DurableLog")).to_be_visible()


def facts(locator: Any) -> list[str]:
    return [t.strip(" ·") for t in locator.locator(".jp-DurableBadge-fact, .jp-DurableLog-fact").all_inner_texts()]


def test_lab_badges_explain_agree_with_the_panel_and_know_their_session(tmp_path: Path, page: Page) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_ui_notebook(root / "ui.ipynb")
    quiet_settings(tmp_path / "logs")
    with running_jupyter("lab", root, tmp_path / "logs") as jupyter:
        open_notebook(page, jupyter, "/lab/tree/ui.ipynb")
        open_panel(page)
        menu(page, "Run", "Run All Cells")
        wait_for_badges(page, "recorded", "recorded")
        expect(page.locator(EARLIER)).to_have_count(0)
        # The panel follows the cells as they finish, not a timer: within 1 s of the last badge's final state.
        expect(page.locator(PANEL_ROWS)).to_have_count(2, timeout=1000)

        # A restart leaves the badges of the previous kernel on screen: they say so.
        menu(page, "Kernel", "Restart Kernel…")
        page.locator(".jp-Dialog .jp-mod-accept").click()
        expect(page.locator(EARLIER)).to_have_count(2)
        expect(page.locator(BADGE).first).to_contain_text("from an earlier session", use_inner_text=True)
        page.screenshot(path=str(OUTPUT / "lab-badges-earlier-session.png"))

        menu(page, "Run", "Run All Cells")
        wait_for_badges(page, "replayed", "replayed")
        expect(page.locator(EARLIER)).to_have_count(0)
        replays = page.locator(f'{PANEL_ROWS}[data-state="replayed"]')
        expect(replays).to_have_count(2, timeout=1000)  # a replay's row is written 0.5 s after it finished

        # The same figures on the badge and in the panel, and a replay's "took" is the replay.
        badge = page.locator(BADGE).first.locator("summary")
        row = page.locator(f'{PANEL_ROWS}[data-state="replayed"][data-cell-id="c-prep"]')
        shown = facts(badge)
        figures = [f for f in shown if f.startswith(("replayed in", "saved"))]
        assert len(figures) == 2 and re.fullmatch(r"saved [\d.]+ s of 1\.\d s", figures[1]), shown
        assert [f for f in facts(row) if f.startswith(("replayed in", "saved"))] == figures
        # No fact is broken across two lines at the panel's default width.
        lines = page.locator(".jp-DurableLog-fact").evaluate_all(
            "els => els.map(e => e.getClientRects().length)")
        assert set(lines) == {1}, lines
        heading = page.locator(".jp-DurableLog-run h3").first
        expect(heading).to_contain_text(re.compile(r"· host \S+"))

        # An input changes: the collapsed badge says why the cell ran again; the details say it once.
        page.locator(".jp-Cell", has_text="n = 2").locator(".cm-content").click()
        page.keyboard.press("Control+a")
        page.keyboard.type("n = 3")
        page.keyboard.press("Shift+Enter")
        page.keyboard.press("Shift+Enter")
        wait_for_badges(page, "replayed", "re-ran")
        rerun = page.locator(BADGE).nth(1)
        expect(rerun.locator("summary")).to_contain_text("input n changed")
        rerun.locator("summary").click()
        details = rerun.locator(".jp-DurableBadge-details")
        expect(details).to_contain_text("why it ran")
        assert details.inner_text().count("input n changed") == 1, details.inner_text()
        summary = rerun.locator("summary").inner_text()
        assert summary.count("re-ran") == 1, summary
        page.screenshot(path=str(OUTPUT / "lab-badge-rerun-reason.png"))
        expect(page.locator(f'{PANEL_ROWS}[data-state="re-ran"]')).to_have_count(1, timeout=1000)
        expect(page.locator(f'{PANEL_ROWS}[data-state="re-ran"]')).to_contain_text("input n changed")

        # A click on an execution selects its cell in command mode: the next keystrokes do not edit it.
        target = page.locator(f'{PANEL_ROWS}[data-state="replayed"][data-cell-id="c-prep"]')
        prep = page.locator(".jp-Cell", has_text="%%durable --name prep")
        target.click()
        expect(prep).to_have_class(re.compile(r"\bjp-mod-active\b"))
        expect(page.locator(".jp-Notebook.jp-mod-commandMode")).to_have_count(1)
        editing = page.evaluate("() => !!document.activeElement?.closest('.cm-editor')")
        assert not editing, "the cell editor has the focus"
        page.screenshot(path=str(OUTPUT / "lab-panel-figures.png"))


def test_notebook7_reopened_notebook_badges_are_from_an_earlier_session(tmp_path: Path, page: Page) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_ui_notebook(root / "ui.ipynb")
    quiet_settings(tmp_path / "logs")
    with running_jupyter("notebook", root, tmp_path / "logs") as jupyter:
        open_notebook(page, jupyter, "/notebooks/ui.ipynb")
        menu(page, "Run", "Run All Cells")
        wait_for_badges(page, "recorded", "recorded")
        expect(page.locator(EARLIER)).to_have_count(0)
        # A reloaded page with the same kernel: the badges are still this kernel's.
        page.keyboard.press("Control+s")
        expect(page.locator(".jp-mod-dirty")).to_have_count(0)
        page.reload()
        wait_for_badges(page, "recorded", "recorded")
        expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_attached()
        expect(page.locator(EARLIER)).to_have_count(0)
    # Reopened later, with a fresh kernel: nothing the badges describe is loaded.
    with running_jupyter("notebook", root, tmp_path / "logs2") as jupyter:
        quiet_settings(tmp_path / "logs2")
        open_notebook(page, jupyter, "/notebooks/ui.ipynb")
        wait_for_badges(page, "recorded", "recorded")
        expect(page.locator(EARLIER)).to_have_count(2)
        expect(page.locator(BADGE).nth(1)).to_contain_text("from an earlier session", use_inner_text=True)
        page.screenshot(path=str(OUTPUT / "notebook7-earlier-session.png"))


def test_lab_crash_resume_example_shows_its_chart(tmp_path: Path, page: Page) -> None:
    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.read(Path(__file__).parents[2] / "example_notebooks" / "crash_resume.ipynb", as_version=4)
    save_with_kernel(nb, root / "crash_resume.ipynb")
    quiet_settings(tmp_path / "logs")
    report = '.jp-Cell:has-text("--name report")'
    with running_jupyter("lab", root, tmp_path / "logs") as jupyter:
        open_notebook(page, jupyter, "/lab/tree/crash_resume.ipynb")
        menu(page, "Run", "Run All Cells")
        wait_for_badges(page, "recorded", "recorded", "recorded", "recorded")
        chart = page.locator(f'{report} .jp-OutputArea-output img[src^="data:image/png"]')
        expect(chart).to_have_count(1)
        expect(page.locator(report)).not_to_contain_text("<Figure size")
        restart_and_run_all(page)
        wait_for_badges(page, "replayed", "replayed", "replayed", "replayed")
        expect(chart).to_have_count(1)
        chart.scroll_into_view_if_needed()
        page.screenshot(path=str(OUTPUT / "lab-crash-resume-chart.png"))
