"""matplotlib figures: fingerprinted by what they show, settled before they are pickled, shown after a replay.

A figure's object graph is no content to hash: it holds id()-keyed callback tables, and drawing it or a pickle
round trip rewrites caches and flags. So a figure is rendered (Agg, RGBA, at its own dpi) and hashed with what
a picture can hide: each artist's type, line data and texts, in the figure's own child order. An artist is its
figure's fingerprint plus its place in that order, so `ax[0, 1]` after a replay is the same input as before.
matplotlib marks a figure stale when anything in it changes: a figure not stale since it was last hashed keeps
its fingerprint without another render.
"""

from __future__ import annotations

import io
import sys
import weakref
from typing import Any

import xxhash

from .fingerprint import Handler, _Hasher, _object
from .sharing import is_object_array


class _Hashed:
    __slots__ = ("digest", "places")

    def __init__(self, digest: bytes, places: dict[int, int]) -> None:
        self.digest = digest
        self.places = places


_HASH_DPI = 40
_CACHE: weakref.WeakKeyDictionary[Any, _Hashed] = weakref.WeakKeyDictionary()


def handler(t: type) -> Handler | None:
    from matplotlib.artist import Artist
    from matplotlib.container import Container
    from matplotlib.figure import Figure

    if issubclass(t, Figure):
        return _figure
    if issubclass(t, Artist):
        return _artist
    if issubclass(t, Container):
        return _container
    return None


def _container(h: _Hasher, container: Any) -> None:
    """What `ax.bar` / `ax.hist` return: a tuple of artists with a label (and an id()-keyed callback table)."""
    h.put(b"mC")
    h.visit((type(container).__qualname__, container.get_label(), len(container)))
    for child in container:
        h.visit(child)


def _figure(h: _Hasher, fig: Any) -> None:
    if h.seen(fig):
        return
    h.put(b"mF")
    h.put(_hashed(fig).digest)


def _artist(h: _Hasher, artist: Any) -> None:
    fig = _root_figure(artist)
    if fig is None or artist is fig:
        _object(h, artist)  # not drawn anywhere: its state is all there is
        return
    if h.seen(artist):
        return
    hashed = _hashed(fig)
    h.put(b"mA")
    h.visit(type(artist).__qualname__)
    h.put(hashed.digest)
    h.visit(hashed.places.get(id(artist), -1))


def _hashed(fig: Any) -> _Hashed:
    import numpy as np

    cached = _CACHE.get(fig)
    if cached is not None and not fig.stale:
        return cached
    state: Any = xxhash.xxh3_128()
    state.update(_pixels(fig))
    artists = fig.findobj(include_self=False)
    for artist in artists:
        state.update(type(artist).__qualname__.encode())
        if hasattr(artist, "get_xydata"):
            state.update(np.ascontiguousarray(artist.get_xydata(), dtype=float).view(np.uint8))
        if hasattr(artist, "get_text"):
            state.update(str(artist.get_text()).encode("utf-8", "surrogatepass"))
    hashed = _Hashed(state.digest(), {id(a): i for i, a in enumerate(artists)})
    _CACHE[fig] = hashed
    return hashed


def _pixels(fig: Any) -> Any:
    """The figure rendered by a temporary Agg canvas, whatever canvas it has: one that came from a pickle may have
    another than the original, and the picture must not depend on it."""
    pixels = io.BytesIO()
    # At a low resolution: a render costs ~50 ms at 100 dpi, a cell reads its figure every time it keys, and
    # what a coarse picture can miss (sub-pixel moves) the line data and texts hashed beside it still hold.
    fig.savefig(pixels, format="rgba", dpi=min(fig.dpi, _HASH_DPI), facecolor=fig.get_facecolor(),
                edgecolor=fig.get_edgecolor())
    # Drawn now: any change to an artist marks it stale again, so until then the cached digest holds.
    fig.stale = False
    return pixels.getbuffer()


def _root_figure(artist: Any) -> Any:
    try:
        return artist.get_figure(root=True)  # matplotlib >= 3.10: the top figure, not a subfigure
    except TypeError:
        return artist.figure


def settle(values: list[Any]) -> None:
    """Before figures are pickled: the autoscaling matplotlib defers to the next draw is done now. A pickle
    drops the pending request, and the replayed axes would keep their old limits (the picture would differ)."""
    if "matplotlib.figure" not in sys.modules:
        return
    from matplotlib._pylab_helpers import Gcf
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    found: list[Any] = [m.canvas.figure for m in Gcf.get_all_fig_managers()]
    for value in values:
        items = value.ravel().tolist() if is_object_array(value) else [value]
        found += [v for v in items if isinstance(v, Figure | Axes)]
    for item in found:
        for ax in item.axes if isinstance(item, Figure) else [item]:
            unstale = getattr(ax, "_unstale_viewLim", None)  # matplotlib >= 3.4
            if unstale is not None:
                unstale()


def enable_display() -> None:
    """After figures come back from a pickle: pyplot resolves its backend, which is what installs the
    notebook's PNG formatter for figures (a replay creates no figure through pyplot that would)."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and "matplotlib.figure" in sys.modules:
        get_backend = getattr(pyplot, "_get_backend_mod", None)
        if get_backend is not None:
            get_backend()
