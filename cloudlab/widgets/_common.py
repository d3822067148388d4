"""What the widgets share: a lazily connected cloud, a message line, errors shown instead of raised."""

from __future__ import annotations

import html
import io
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from cloudlab.client import Cloud, connect, error_message

COLOURS = {"error": "#b00020", "ok": "#1b5e20", "info": "#37474f"}


class Panel:
    """Base of the widgets: ``cloud`` (given, or connected on first use from ``state``), ``message`` (an
    HTML line that shows errors and outcomes), ``widget`` (what a notebook displays)."""

    widget: widgets.Widget

    def __init__(self, cloud: Cloud | None = None, state: str | None = None) -> None:
        self._cloud = cloud
        self._state = state
        self.message = widgets.HTML(value="")
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def cloud(self) -> Cloud:
        if self._cloud is None:
            self._cloud = connect(self._state, progress=False)
        return self._cloud

    # -- messages -------------------------------------------------------------------------------------
    def say(self, text: str, kind: str = "info") -> None:
        colour = COLOURS.get(kind, COLOURS["info"])
        self.message.value = f'<span style="color:{colour}">{html.escape(text)}</span>' if text else ""

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.say(error_message(exc), "error")

    def guard(self, action: Callable[[], Any]) -> Any:
        """Run ``action``; an exception becomes the message (and ``self.error``), never a traceback."""
        self.error = None
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - shown in the widget
            self.fail(exc)
            return None

    # -- background work ------------------------------------------------------------------------------
    def in_background(self, work: Callable[[], Any], name: str) -> threading.Thread:
        self._thread = threading.Thread(target=lambda: self.guard(work), name=name, daemon=True)
        self._thread.start()
        return self._thread

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the background work started by the last button press; True if it has finished."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.busy

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:  # display(panel), or a panel last in a cell, shows its widget
        return self.widget._repr_mimebundle_(**kwargs)


def figure_png(fig: Any) -> bytes:
    """A matplotlib Figure (made without pyplot, so the notebook's backend is untouched) as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()
