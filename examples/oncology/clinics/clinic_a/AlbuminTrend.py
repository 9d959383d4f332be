#!/usr/bin/env python3
# @depend ./Albumin
# @param min_points=3
# @key patient_id
# @assert not_null(patient_id)
# @assert unique(patient_id)
# @assert rows > 0
# @timeout 60s
"""Albumin trend per patient (clinic A only): a Python node.

A falling serum albumin is a prognostic sign in oncology. For every patient
with at least `min_points` albumin results this fits a least-squares line
through (days since first result, g/dL) and reports the slope per 30 days.

Contract with sluice (Python 3 standard library only):
  SLUICE_INPUT_Albumin   path of the input table, canonical CSV
  SLUICE_OUTPUT          path where the output CSV is written
  SLUICE_PARAM_min_points  the parameter (default from @param above)
"""

import csv
import datetime
import os

SLOPE_FLAT = 0.05  # g/dL per 30 days regarded as stable


def fmt(x):
    """A real in shortest round-trip form, never '-0.0'."""
    return repr(x + 0.0)


def main():
    min_points = int(os.environ["SLUICE_PARAM_min_points"])
    series = {}
    with open(os.environ["SLUICE_INPUT_Albumin"], newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["value"] == "" or row["collected_date"] == "":
                continue
            when = datetime.date.fromisoformat(row["collected_date"])
            series.setdefault(row["patient_id"], []).append((when, row["lab_id"], float(row["value"])))

    out = []
    for patient_id in sorted(series):
        points = sorted(series[patient_id])
        if len(points) < min_points:
            continue
        t0 = points[0][0]
        xs = [(when - t0).days for when, _, _ in points]
        ys = [value for _, _, value in points]
        n = len(points)
        mx = sum(xs) / n
        my = sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx == 0:
            slope, trend = "", ""
        else:
            per_day = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
            per_30 = round(per_day * 30, 3)
            slope = fmt(per_30)
            trend = "falling" if per_30 < -SLOPE_FLAT else "rising" if per_30 > SLOPE_FLAT else "stable"
        out.append([
            patient_id, n,
            points[0][0].isoformat(), points[-1][0].isoformat(),
            fmt(ys[0]), fmt(ys[-1]), slope, trend,
        ])

    with open(os.environ["SLUICE_OUTPUT"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["patient_id", "n_points", "first_date", "last_date",
                    "first_value", "last_value", "slope_per_30d", "trend"])
        w.writerows(out)


if __name__ == "__main__":
    main()
