"""The Results charts: Plotly figures built from DataFrames (``figures``), the axes and words
they use (``axes``), parameter importances for any sweep (``importance``), and a FigureWidget kept
up to date in place (``live``).  Plotly is imported by ``live`` only (and ``importance`` imports
Optuna when asked): the builders are plain functions returning figure dictionaries."""

from .axes import auto_scale, params_label, scale_of
from .figures import (
           Curve,
           ParallelData,
           brushed,
           contour,
           curves,
           history,
           importance_bars,
           message,
           parallel,
           parallel_data,
           pareto,
           slice_plot,
           timeline,
)

__all__ = ["Curve", "ParallelData", "auto_scale", "brushed", "contour", "curves", "history", "importance_bars",
           "message", "pareto", "parallel", "parallel_data", "params_label", "scale_of", "slice_plot", "timeline"]
