"""The report's PNGs are valid images with labelled axes and legends, and the markdown links them."""
import re

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np

from hitchhiker import metrics, report


def _result(name, daily, actions):
    dates = [f"2017-01-{d:02d}" for d in range(2, 2 + len(daily))]
    m = metrics.summarize(dates, daily, [True] * len(daily), actions, picked_better=[1] * len(daily), n_boot=50)
    return report.SubjectResult(name, m, dates, list(daily), {"unsupported_rate": 0.25, "agreement_rate": 0.5})


def _input():
    rng = np.random.default_rng(0)
    results = [
        _result("ckpt-1", rng.normal(0.002, 0.01, 20), ["A", "B"] * 10),
        _result("base:hitchhiker-tiny", rng.normal(0, 0.01, 20), ["A"] * 20),
        _result("baseline:random", rng.normal(0, 0.01, 20), ["B", "A"] * 10),
    ]
    return report.ReportInput("Evaluation of ckpt-1", "ckpt-1", ("2017-01-02", "2017-01-21"), "pairwise",
                              "spec-v1", 20, results, split_note="training ended 2016-12-30",
                              training_rewards=[(1, -0.001), (2, 0.001), (3, 0.002)])


def _check_axes(fig):
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        legend = ax.get_legend()
        assert legend is not None and len(legend.get_texts()) >= 1
    plt.close(fig)


def test_figures_have_labels_and_legends():
    data = _input()
    fig = report.equity_figure(data.results)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [r.subject for r in data.results]
    _check_axes(fig)
    _check_axes(report.training_figure(data.training_rewards, data.results, data.candidate))
    _check_axes(report.training_figure([], data.results, data.candidate))  # nothing trained yet: still labelled
    fig = report.actions_figure(data.results)
    assert sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) == ["A", "B"]
    _check_axes(fig)


def test_report_writes_valid_pngs_linked_from_markdown(tmp_path):
    path = report.write_report(tmp_path / "run", _input())
    text = path.read_text()
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text)
    assert sorted(links) == ["actions.png", "equity.png", "training_reward.png"]
    for link in links:
        png = path.parent / link
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 0  # something was drawn
    for name in ("ckpt-1", "base:hitchhiker-tiny", "baseline:random", "training ended 2016-12-30"):
        assert name in text


def test_prepend_puts_a_front_page_with_its_figure_above_the_report(tmp_path):
    path = report.write_report(tmp_path / "run", _input())
    before = path.read_text()
    history = [{"iteration": i, "accuracy": a} for i, a in enumerate([0.5, 0.5, 0.62, 0.91])]
    fig = report.learning_curve_figure(history, target=0.8)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["held-out accuracy", "chance", "target 0.8"]
    assert list(fig.axes[0].lines[0].get_ydata()) == [0.5, 0.5, 0.62, 0.91]
    report.prepend(path, ["# Front", "", "![curve](curve.png)", ""], {"curve.png": fig})
    text = path.read_text()
    assert text.startswith("# Front\n") and text.endswith(before)
    assert (path.parent / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_curve_is_labelled():
    _check_axes(report.learning_curve_figure([{"iteration": 0, "accuracy": 0.5}]))


def test_teacher_weights_are_plotted_when_the_candidate_trained_on_teachers(tmp_path):
    from datetime import date

    rows = [(date(2017, 1, d), t, w, f) for d in range(2, 8)
            for t, w, f in (("ckpt-a", 0.5 + 0.05 * d, False), ("base:x", 0.5 - 0.05 * d, d == 6))]
    fig = report.teacher_weights_figure(rows)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["base:x", "ckpt-a"]
    assert list(lines[1].get_ydata()) == [w for _, t, w, _ in rows if t == "ckpt-a"]
    assert "base:x: forced (stale)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    _check_axes(fig)
    data = _input()
    data.teacher_weights = rows
    text = report.write_report(tmp_path / "run", data).read_text()
    assert "teacher_weights.png" in re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text)
    assert mpimg.imread(tmp_path / "run" / "teacher_weights.png").std() > 0
