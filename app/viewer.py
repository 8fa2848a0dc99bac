"""The image viewer: a radiograph as a Plotly image figure (zoom, pan, reset built in), windowed by the
page's controls, with an optional Grad-CAM layer that has its own colour scale and opacity.

Plotly is the maintained component here: Streamlit renders it natively (`st.plotly_chart`), its
image trace zooms and pans in the browser without a round trip, and a heatmap trace on top gives a
colour bar for free. The picture is sent once as a PNG; the heatmap as a coarse grid (Grad-CAM has
no finer detail than the network's feature map).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from PIL import Image

from pipeline.dicom import shrink

__all__ = ["COLOUR_SCALES", "PLOT_CONFIG", "figure", "png_uri"]

COLOUR_SCALES = ["Jet", "Inferno", "Viridis", "Hot"]
HEAT_GRID = 128  # the heatmap layer's long side in cells
HEAT_FLOOR = 0.05  # weaker evidence is not drawn at all
HEAT_SOLID = 0.5  # the colour scale fades in from transparent at 0 to solid here, so the film shows through
PLOT_CONFIG = {
    "scrollZoom": True,
    "displaylogo": False,
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "toImage"],
}


def png_uri(grey: np.ndarray) -> str:
    """An 8-bit grey picture as a PNG data URI."""
    out = io.BytesIO()
    Image.fromarray(grey).save(out, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def fading(name: str) -> list[list]:
    """Plotly's colour scale `name` with an alpha ramp: weak evidence transparent, strong evidence solid."""
    stops = plotly.colors.get_colorscale(name)
    faded = []
    for stop, colour in stops:
        red, green, blue = plotly.colors.unlabel_rgb(plotly.colors.convert_colors_to_same_type(colour)[0][0])
        faded.append([stop, f"rgba({red:.0f},{green:.0f},{blue:.0f},{min(1.0, stop / HEAT_SOLID):.3f})"])
    return faded


def figure(
    grey: np.ndarray,
    heat: np.ndarray | None = None,
    *,
    opacity: float = 0.45,
    colours: str = "Jet",
    height: int = 560,
    revision: str = "",
) -> go.Figure:
    """The picture (uint8 [H, W]) with `heat` ([0, 1], same shape) over it; zoom survives reruns by `revision`."""
    rows, cols = grey.shape
    fig = go.Figure(go.Image(source=png_uri(grey), hoverinfo="skip"))
    if heat is not None:
        step = max(1, -(-max(heat.shape) // HEAT_GRID))
        coarse = shrink(np.asarray(heat, dtype=np.float32), max(heat.shape) // step)
        coarse = np.where(coarse >= HEAT_FLOOR, coarse, np.nan)
        cell_r, cell_c = rows / coarse.shape[0], cols / coarse.shape[1]
        fig.add_trace(
            go.Heatmap(
                z=coarse,
                x0=cell_c / 2 - 0.5,
                dx=cell_c,
                y0=cell_r / 2 - 0.5,
                dy=cell_r,
                zmin=0.0,
                zmax=1.0,
                colorscale=fading(colours),
                opacity=opacity,
                hoverinfo="skip",
                colorbar={"title": {"text": "Grad-CAM", "side": "right"}, "thickness": 12, "len": 0.8},
            )
        )
    fig.update_xaxes(visible=False, range=[-0.5, cols - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[rows - 0.5, -0.5], scaleanchor="x", constrain="domain")
    fig.update_layout(
        height=height,
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        dragmode="pan",
        uirevision=revision or None,
        plot_bgcolor="black",
    )
    return fig
