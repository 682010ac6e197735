"""genray bench dashboard's parts that need no Ray nor Prometheus: the dashboard's queries as
Grafana sends them with every variable at All, its legends, and the drawing of every panel where
the dashboard places it. (The run itself, against a real Prometheus, is the bench.)"""

import json
import math

import pytest

from genray.bench.dashboard import DASHBOARD, DashboardError, draw, expand, legend, panels


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def test_every_query_of_the_dashboard_expands_with_no_variable_left(dashboard):
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    assert len(exprs) > 20
    for expr in exprs:
        query = expand(expr, "30s")
        assert "$" not in query and ("[30s]" in query) == ("$__rate_interval" in expr), query
        assert query.count("(") == query.count(")") and query.count("{") == query.count("}")
    assert expand('rate(x{app=~"$App",run=~"${Run}"}[$__rate_interval])', "20s") == 'rate(x{app=~".*",run=~".*"}[20s])'
    with pytest.raises(DashboardError, match="a variable this bench does not set"):
        expand('x{node=~"$Node"}')


def test_a_legend_follows_grafanas_legend_format():
    labels = {"app": "/heat", "status": "200"}
    assert legend("{{app}} {{ status }}", labels) == "/heat 200"
    assert legend("{{app}} p99 {{missing}}", labels) == "/heat p99 "
    assert legend(None, labels) == "{app=/heat, status=200}"


def synthetic(dashboard):
    """Every timeseries panel with one sine series per target (two for the first), and one panel with none."""
    drawn = []
    for i, panel in enumerate(p for p in panels(dashboard) if p.get("type") == "timeseries"):
        targets = [{"query": t["expr"], "series": [
            {"legend": f"{t['refId']} {k}", "labels": {}, "points": [[s, 1 + math.sin(s / 10 + k)] for s in range(0, 120, 4)]}
            for k in range(2 if j == 0 else 1)]} for j, t in enumerate(panel["targets"])]
        if i == 3:
            targets = [{**t, "series": []} for t in targets]
        drawn.append({"title": panel["title"], "unit": panel["fieldConfig"]["defaults"].get("unit"),
                      "gridPos": panel["gridPos"], "targets": targets})
    return drawn


def test_every_panel_is_drawn_where_the_dashboard_places_it(dashboard, tmp_path):
    drawn = synthetic(dashboard)
    fig = draw(drawn, dashboard, "test")
    assert [ax.get_title(loc="left") for ax in fig.axes] == [p["title"] for p in drawn]
    for ax, panel in zip(fig.axes, drawn):
        lines = sum(len(t["series"]) for t in panel["targets"])
        assert len(ax.get_lines()) == lines
        if not lines:
            assert [t.get_text() for t in ax.texts] == ["No data"]
    # Panels on one grid row share their height; left to right in x order; rows top to bottom in y order.
    boxes = {p["title"]: (p["gridPos"], ax.get_position()) for p, ax in zip(drawn, fig.axes)}
    for (pos_a, box_a), (pos_b, box_b) in zip(list(boxes.values()), list(boxes.values())[1:]):
        if pos_a["y"] == pos_b["y"]:
            assert box_a.y0 == pytest.approx(box_b.y0) and box_a.x0 < box_b.x0
        else:
            assert pos_a["y"] < pos_b["y"] and box_a.y0 > box_b.y0
    # Units as Grafana shows them: seconds under 1 in ms, a percentunit in %.
    units = {p["unit"]: ax.get_ylabel() for p, ax in zip(drawn, fig.axes)}
    assert units["s"] == "s" and units["percentunit"] == "%" and units["reqps"] == "req/s"
    small = [{**drawn[1], "targets": [{"query": "", "series": [{"legend": "x", "labels": {}, "points": [[0, 0.02], [4, 0.03]]}]}]}]
    [ax] = draw(small, dashboard, "small").axes
    assert ax.get_ylabel() == "ms" and list(ax.get_lines()[0].get_ydata()) == pytest.approx([20, 30])
    fig.savefig(tmp_path / "dashboard.png", dpi=40)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
