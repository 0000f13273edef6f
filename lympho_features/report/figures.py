"""Figures of the report (matplotlib), each returned as an inline PNG data URI."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from sklearn.metrics import roc_auc_score, roc_curve

from ..glossary import clinician_name
from .inputs import ReportInputs
from .language import FAMILY_TITLE
from .metrics import calibration_bins
from .style import REACTIVE_COLOUR, TUMORAL_COLOUR, UNKNOWN_COLOUR


def data_uri(data: bytes, mime: str) -> str:
    """``data:`` URI of some bytes: how every image of the report is inlined."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure(w: float, h: float):
    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return data_uri(buf.getvalue(), "image/png")


def class_colour(label) -> str:
    if pd.isna(label):
        return UNKNOWN_COLOUR
    return TUMORAL_COLOUR if int(label) == 1 else REACTIVE_COLOUR


def _plain_log_ticks(axis) -> None:
    """Ticks of a log axis written 2, 5, 10, 20... rather than 2x10^0."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def cohort_figure(p: pd.DataFrame) -> str | None:
    cols = [
        (c, t)
        for c, t in (
            ("age", "Age (years)"),
            ("lymph_count", "Lymphocyte count (10⁹/L)"),
            ("n_cells", "Crops per patient"),
        )
        if c in p
    ]
    if not cols:
        return None
    fig = _figure(3.1 * len(cols), 2.6)
    axes = fig.subplots(1, len(cols), squeeze=False)[0]
    for ax, (c, title) in zip(axes, cols, strict=True):
        data, names, colours = [], [], []
        for lab, name, colour in (
            (0, "reactive", REACTIVE_COLOUR),
            (1, "tumoral", TUMORAL_COLOUR),
            (None, "no label", UNKNOWN_COLOUR),
        ):
            rows = p["label"].isna() if lab is None else p["label"] == lab
            v = pd.to_numeric(p.loc[rows.fillna(False), c], errors="coerce").dropna().to_numpy()
            if len(v):
                data.append(v)
                names.append(name)
                colours.append(colour)
        if not data:
            continue
        bp = ax.boxplot(data, tick_labels=names, widths=0.5, patch_artist=True, showfliers=False)
        for patch, colour in zip(bp["boxes"], colours, strict=True):
            patch.set_facecolor(colour)
            patch.set_alpha(0.35)
        rng = np.random.default_rng(0)  # fixed jitter: the same report twice is the same file
        for i, (v, colour) in enumerate(zip(data, colours, strict=True)):
            ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, len(v)), v, s=8, color=colour, alpha=0.7, lw=0)
        if c == "lymph_count":
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
    return _png(fig)


def roc_figure(cvp: pd.DataFrame, cv: dict) -> str:
    fig = _figure(4.2, 3.9)
    ax = fig.add_subplot()
    groups = cvp.groupby("repeat") if "repeat" in cvp else [(0, cvp)]
    aucs = []
    for _, g in groups:
        fpr, tpr, _ = roc_curve(g["label"], g["probability"])
        aucs.append(roc_auc_score(g["label"], g["probability"]))
        ax.plot(fpr, tpr, color="#555", lw=0.8, alpha=0.45)
    ax.plot([0, 1], [0, 1], ls=":", color="#aaa", lw=1)
    auc_txt = f"AUC {np.mean(aucs):.3f} ± {np.std(aucs, ddof=1) if len(aucs) > 1 else 0:.3f}"
    if "sensitivity_mean" in cv and "specificity_mean" in cv:
        ax.scatter(
            [1 - cv["specificity_mean"]],
            [cv["sensitivity_mean"]],
            color=TUMORAL_COLOUR,
            zorder=3,
            s=30,
            label="operating point (CV threshold)",
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"ROC, one line per repeat ({auc_txt})", fontsize=9.5)
    ax.set_xlabel("1 − specificity (reactive called tumoral)", fontsize=9)
    ax.set_ylabel("sensitivity (tumoral found)", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.tick_params(labelsize=8)
    return _png(fig)


def calibration_figure(cvp: pd.DataFrame, meta: dict) -> str:
    bins = calibration_bins(cvp["label"], cvp["probability"], 10)
    brier = float(np.mean((cvp["probability"] - cvp["label"]) ** 2))
    fig = _figure(4.2, 3.9)
    ax, axh = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ls=":", color="#aaa", lw=1, label="perfect calibration")
    ax.plot(bins["mean_predicted"], bins["observed_rate"], "o-", color="#333", ms=4, label="model (CV)")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylabel("observed share tumoral", fontsize=9)
    ax.set_title(f"Reliability diagram (Brier {brier:.3f})", fontsize=9.5)
    ax.set_ylim(-0.02, 1.02)
    axh.bar((bins["bin_low"] + bins["bin_high"]) / 2, bins["count"], width=0.09, color="#999")
    axh.set_ylabel("count", fontsize=8)
    axh.set_xlabel("predicted probability of tumoral", fontsize=9)
    for a in (ax, axh):
        a.tick_params(labelsize=8)
    ax.set_xlim(0, 1)
    return _png(fig)


def family_figure(fam: pd.DataFrame) -> str:
    fig = _figure(8.4, 0.32 * len(fam) + 1.1)
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    names = [FAMILY_TITLE.get(k, k) for k in fam.index][::-1]
    ax1.barh(names, fam["gain_share"].to_numpy()[::-1] * 100, color="#777")
    ax1.set_xlabel("share of gain (%)", fontsize=9)
    total = fam["mean_abs_shap"].sum()
    # grey, not blue: blue means "toward reactive" everywhere else in the report
    ax2.barh(names, (fam["mean_abs_shap"].to_numpy()[::-1] / total * 100) if total > 0 else 0, color="#555")
    ax2.set_xlabel("share of mean |SHAP| (%)", fontsize=9)
    for a in (ax1, ax2):
        a.tick_params(labelsize=8.5)
    return _png(fig)


def dependence_figure(inp: ReportInputs, top: pd.DataFrame) -> str:
    n = len(top)
    ncols = 3
    nrows = max(1, math.ceil(n / ncols))
    fig = _figure(10.5, 2.9 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    lab = inp.patients["label"]
    colours = [class_colour(v) for v in lab]
    for ax, (_, r) in zip(axes, top.iterrows(), strict=False):
        j = inp.features.index(r["feature"])
        x, s = inp.X[:, j], inp.contrib[:, j]
        if r["feature"] == "log_lymph_count":
            x = np.exp(x)
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis)
        ax.scatter(x, s, c=colours, s=12, alpha=0.75, lw=0)
        ax.axhline(0, color="#999", lw=0.8)
        ax.set_title(clinician_name(r["feature"]), fontsize=8.5)
        ax.set_ylabel("contribution", fontsize=8)
        ax.tick_params(labelsize=7.5)
    for ax in axes[n:]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], marker="o", ls="", color=c, label=t)
        for c, t in ((TUMORAL_COLOUR, "tumoral"), (REACTIVE_COLOUR, "reactive"), (UNKNOWN_COLOUR, "no label"))
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    return _png(fig)
