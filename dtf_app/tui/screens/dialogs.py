"""Small modal dialogs: submit a task file, confirm an action, the help screen with the key map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Markdown, Static

KEY_MAP = """\
# DTF dashboard — keys

| key | where | does |
|---|---|---|
| `1` … `5` | anywhere | Overview, Cluster, Workers, Tasks, Results |
| `tab` / `shift+tab` | anywhere | move the focus |
| `s` | anywhere | submit a task file |
| `ctrl+p` | anywhere | command palette (views, submit, help, quit) |
| `?` | anywhere | this help |
| `q` / `ctrl+q` | anywhere | quit (an embedded cluster is stopped cleanly) |
| `enter` | a task row | open the task: live log, attempts, result, tests |
| `c` | Tasks, task detail | cancel the task (asks first) |
| `/` | Tasks | filter: words, `status:failed,running`, `type:test` |
| `f` | Tasks | cycle the state filter |
| `o` | Tasks | cycle the order: newest, oldest, status, priority, name |
| `d` / `e` | Workers | drain the worker (no new tasks; running ones finish) / enable it again |
| `[` / `]` | Tasks | previous / next page of 300 rows |
| `l` | Results | cycle the aggregation level: model, hardware, batch size, precision, ... |
| `escape` | dialogs, detail, filter | back |

The mouse works too: click tabs, rows (double-click opens a task), buttons and scroll bars.
A red banner at the top means the connection is lost or the coordinator is starting; the dashboard
reconnects by itself and reloads everything it shows when it is back.
"""


class HelpScreen(ModalScreen[None]):
    """The key map."""

    AUTO_FOCUS = "#help-close"

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box", classes="dialog"):
            yield Markdown(KEY_MAP)
            yield Button("Close", id="help-close", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Yes / no."""

    AUTO_FOCUS = "#no"  # enter alone never confirms a destructive action

    BINDINGS = [Binding("escape,n", "no", "No"), Binding("y", "yes", "Yes")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, id="confirm-question")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)


def default_task_file() -> str:
    """The example workload when started from a checkout (assets/tasks/demo.json), else empty."""
    for candidate in (Path("assets/tasks/demo.json"), Path(__file__).resolve().parents[3] / "assets/tasks/demo.json"):
        if candidate.is_file():
            return str(candidate)
    return ""


class SubmitScreen(ModalScreen[Any]):
    """Ask for a task file; dismisses with the loaded task documents (errors are shown in place)."""

    AUTO_FOCUS = "#submit-path"

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="submit-box"):
            yield Label("Submit a task file (JSON: a task, a list, or {\"tasks\": [...]})")
            yield Input(value=default_task_file(), placeholder="path/to/tasks.json", id="submit-path")
            yield Static("", id="submit-error")
            with Horizontal(classes="buttons"):
                yield Button("Submit", id="submit-go", variant="success")
                yield Button("Cancel", id="submit-cancel")

    def action_dismiss_none(self) -> None:
        self.dismiss(None)

    def _try(self) -> None:
        from dtf_app.client import TaskFileError, load_task_file

        path = self.query_one("#submit-path", Input).value.strip()
        if not path:
            self.query_one("#submit-error", Static).update("[red]give the path of a task file[/]")
            return
        try:
            tasks = load_task_file(path)
        except TaskFileError as exc:
            self.query_one("#submit-error", Static).update(f"[red]{exc}[/]")
            return
        self.dismiss({"path": path, "tasks": tasks})

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._try()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "submit-go":
            self._try()
        else:
            self.dismiss(None)
