#!/usr/bin/env python3
"""Write the synthetic data root of the oncology example (``data/``).

Everything here is invented: there are no names, the ids are random numbers
and the clinical values come from a toy model. Nothing is PHI.

The output is deterministic: running this script twice gives byte-identical
files, on any machine and Python 3 version. To get there it draws only from
``random.Random(seed).random()`` (whose output Python guarantees across
versions; ``randint``, ``choice``, ``sample`` and ``gauss`` are not), uses
plain arithmetic (no libm), never iterates over a set, and writes with
``\\n`` line endings.

The exports are deliberately messy, the way real clinic exports are:

clinic A (``data/clinic_a``), the standard Varian ARIA export
  * patient ids are zero-padded MRNs (``00104217``) that must stay text;
  * a few patients are exported twice (exact duplicate rows);
  * sex is ``F``/``M`` with the odd lower-case value, ``U`` or blank;
  * lab vendors are spelled ``Quest`` / ``QUEST`` / ``quest `` ...;
  * the in-house lab reports albumin and hemoglobin in g/L, creatinine in
    umol/L, everyone else g/dL and mg/dL;
  * some Quest albumin results arrive in g/L although the code is the g/dL
    one (a unit mismatch the Labs node flags instead of scaling wrongly);
  * two local lab codes are not in reference/lab_map.csv (Quest ``PREALB``,
    in-house urine albumin ``ALB-U``);
  * non-numeric results (``HEMOLYZED``, ``QNS``), blank results, two
    timestamp formats, ICD-10 codes without the dot, in lower case or with
    stray spaces, non-cancer codes, rows for patients that are not in the
    patient export.

clinic B (``data/clinic_b``), a later ARIA version with a different
patient export: ``pt_id`` (plain integers), ``birth_date`` as ``M/D/YYYY``
(sometimes zero-padded, sometimes not), ``sex_cd`` coded ``1``/``2``/``9``,
ZIP+4 postal codes, a ``deceased`` Y/N flag, and trailer rows without an id.
Its labs come from a hospital Sunquest LIS (with an unmapped ``CRP`` code),
LabCorp (whose six-digit codes lost their leading zeros in a spreadsheet
for part of the rows: ``1081`` instead of ``001081``) and the in-house lab.

Usage: python3 tools/gen_data.py [DATA_ROOT]   (default: ../data next to tools/)
"""

import csv
import datetime as dt
import os
import sys

# ---------------------------------------------------------------------------
# Deterministic random helpers built on Random.random() only.


class Rand:
    def __init__(self, seed):
        import random

        self._r = random.Random(seed)

    def random(self):
        return self._r.random()

    def randint(self, a, b):
        """Uniform integer in [a, b]."""
        return a + int(self._r.random() * (b - a + 1))

    def chance(self, p):
        return self._r.random() < p

    def choice(self, seq):
        return seq[self.randint(0, len(seq) - 1)]

    def weighted(self, pairs):
        """pairs: [(value, weight), ...]"""
        total = sum(w for _, w in pairs)
        x = self._r.random() * total
        for value, w in pairs:
            x -= w
            if x < 0:
                return value
        return pairs[-1][0]

    def normal(self):
        """Approximately standard normal (Irwin-Hall, 12 uniforms)."""
        return sum(self._r.random() for _ in range(12)) - 6.0

    def distinct_ints(self, a, b, n):
        """n distinct integers from [a, b], in draw order."""
        seen = {}
        out = []
        while len(out) < n:
            x = self.randint(a, b)
            if x not in seen:
                seen[x] = True
                out.append(x)
        return out

    def shuffle(self, items):
        for i in range(len(items) - 1, 0, -1):
            j = self.randint(0, i)
            items[i], items[j] = items[j], items[i]


def clip(x, lo, hi):
    return lo if x < lo else hi if x > hi else x


def day(s):
    return dt.date.fromisoformat(s)


# ---------------------------------------------------------------------------
# The toy clinical model.

# (site, [(code, weight)], sex restriction or None, weight)
SITES = [
    ("breast", [("C50.9", 5), ("C50.4", 3), ("C50.1", 2)], "F", 26),
    ("lung", [("C34.1", 5), ("C34.9", 4), ("C34.3", 2)], None, 18),
    ("colorectal", [("C18.7", 3), ("C18.2", 2), ("C20", 3)], None, 14),
    ("prostate", [("C61", 1)], "M", 12),
    ("pancreas", [("C25.0", 2), ("C25.9", 3)], None, 5),
    ("melanoma", [("C43.5", 2), ("C43.9", 1)], None, 5),
    ("ovary", [("C56.9", 1)], "F", 4),
    ("bladder", [("C67.9", 1)], None, 4),
    ("lymphoma", [("C83.3", 2), ("C85.9", 1)], None, 5),
    ("myeloma", [("C90.0", 1)], None, 3),
    ("stomach", [("C16.9", 1)], None, 2),
    ("head_neck", [("C01", 1), ("C32.9", 1)], None, 2),
]
SECONDARY_CODES = [("C78.0", 3), ("C79.51", 3), ("C77.3", 2), ("C78.7", 2)]
OTHER_CODES = ["I10", "E11.9", "Z51.11", "D63.0", "R53.83", "K21.9", "E87.1"]

# Analyte draws per vendor: analyte -> (code, unit, kind) where kind says
# how the value is written.
VENDORS = {
    "QUEST": {
        "alb": ("ALB", "Albumin", "g/dL", "gdl1"),
        "cre": ("CREAT", "Creatinine", "mg/dL", "mgdl2"),
        "hgb": ("HGB", "Hemoglobin", "g/dL", "gdl1"),
    },
    "LABCORP": {
        "alb": ("001081", "Albumin", "g/dL", "gdl1_trim"),
        "cre": ("001370", "Creatinine", "mg/dL", "mgdl2"),
        "hgb": ("005041", "Hemoglobin", "g/dL", "gdl1_trim"),
    },
    "SUNQUEST": {
        "alb": ("ALBU", "ALBUMIN", "g/dl", "gdl1"),
        "cre": ("CREA", "CREATININE", "mg/dl", "mgdl2"),
        "hgb": ("HGB", "HEMOGLOBIN", "g/dl", "gdl1"),
    },
    "INHOUSE": {
        "alb": ("ALB-S", "Albumin serum", "g/L", "gl_int"),
        "cre": ("CRE-S", "Creatinine serum", "umol/L", "umol_int"),
        "hgb": ("HB-S", "Haemoglobin", "g/L", "gl_int"),
    },
}
VENDOR_SPELLINGS = {
    "QUEST": [("Quest", 6), ("QUEST", 3), ("quest ", 1)],
    "LABCORP": [("LabCorp", 7), ("LABCORP", 3)],
    "SUNQUEST": [("SUNQUEST", 8), ("Sunquest", 2)],
    "INHOUSE": [("InHouse", 8), ("INHOUSE", 2)],
}

SPECIALTIES = [
    ("Medical Oncology", 6),
    ("Hematology/Oncology", 3),
    ("Radiation Oncology", 2),
    ("Surgical Oncology", 2),
]


def fmt_value(v, kind):
    """Write a value (in g/dL or mg/dL) the way the vendor reports it."""
    if kind == "gdl1":
        return "%.1f" % v
    if kind == "gdl1_trim":  # LabCorp drops a trailing ".0": "4" not "4.0"
        s = "%.1f" % v
        return s[:-2] if s.endswith(".0") else s
    if kind == "mgdl2":
        return "%.2f" % v
    if kind == "gl_int":  # g/dL -> g/L, whole numbers
        return str(int(v * 10 + 0.5))
    if kind == "umol_int":  # mg/dL -> umol/L
        return str(int(v * 88.4 + 0.5))
    raise ValueError(kind)


def make_physicians(rng, prefix, n):
    ids = sorted(rng.distinct_ints(10, 99, n))
    rows = []
    for i, num in enumerate(ids):
        npi = str(1000000000 + rng.randint(0, 899999999))
        if i == 3:
            npi = ""  # a fellow without an NPI on file yet
        rows.append(
            {
                "physician_id": "%s%03d" % (prefix, num),
                "npi": npi,
                "specialty": rng.weighted(SPECIALTIES),
                "active": "N" if rng.chance(0.15) else "Y",
            }
        )
    return rows


def make_patients(rng, n, physicians, ids):
    """The latent patients; each clinic writes them in its own format."""
    phys_ids = [p["physician_id"] for p in physicians]
    # a physician id the physician export does not know (left-join mess)
    phys_ids.append(phys_ids[0][0] + "999")
    start, span = day("2018-01-01"), (day("2024-06-30") - day("2018-01-01")).days
    patients = []
    for pid in ids[:n]:
        site, codes, only_sex, _ = rng.weighted([(s, s[3]) for s in SITES])
        sex = only_sex or ("F" if rng.chance(0.5) else "M")
        dx_date = start + dt.timedelta(days=rng.randint(0, span))
        age = clip(int(64 + 11 * rng.normal()), 28, 90)
        birth = dx_date - dt.timedelta(days=age * 365 + rng.randint(0, 364))
        decline = rng.weighted([(0.0, 6), (-0.6, 3), (0.25, 1)])
        patients.append(
            {
                "id": pid,
                "sex": sex,
                "birth": birth,
                "dx_date": dx_date,
                "site": site,
                "code": rng.weighted(codes),
                "physician": "" if rng.chance(0.03) else rng.choice(phys_ids),
                "deceased": rng.chance(0.18),
                "alb0": clip(3.9 + 0.35 * rng.normal(), 2.4, 4.8),
                "alb_slope": decline + 0.15 * rng.normal(),
                "cre0": clip((0.95 if sex == "M" else 0.78) + 0.15 * rng.normal(), 0.45, 1.6),
                "hgb0": clip((14.2 if sex == "M" else 12.8) + 1.0 * rng.normal(), 9.5, 16.5),
                "cancer": not rng.chance(0.02),  # a few referrals never get a C code
            }
        )
    return patients


def make_diagnoses(rng, patients, orphan_ids):
    rows = []

    def messy(code):
        r = rng.random()
        if r < 0.05:
            return code.replace(".", "")
        if r < 0.08:
            return code.lower()
        if r < 0.10:
            return " " + code + " "
        return code

    def dx_day(d):
        return "" if rng.chance(0.01) else d.isoformat()

    for p in patients:
        recs = []
        if p["cancer"]:
            d = p["dx_date"]
            for k in range(1 + rng.randint(0, 3)):  # the same code on several encounters
                recs.append((messy(p["code"]), dx_day(d)))
                d = d + dt.timedelta(days=rng.randint(14, 120))
            if rng.chance(0.25):
                d2 = p["dx_date"] + dt.timedelta(days=rng.randint(60, 700))
                recs.append((messy(rng.weighted(SECONDARY_CODES)), dx_day(d2)))
        for _ in range(rng.randint(0, 3)):
            d3 = p["dx_date"] + dt.timedelta(days=rng.randint(-200, 500))
            recs.append((messy(rng.choice(OTHER_CODES)), d3.isoformat()))
        for code, d in recs:
            rows.append([p["id"], code, d])
    for oid in orphan_ids:
        rows.append([oid, "C50.9", "2021-03-0%d" % rng.randint(1, 9)])
    rng.shuffle(rows)
    rows.sort(key=lambda r: (r[2] == "", r[2]))  # export order: by date, blanks last
    return rows


def make_labs(rng, patients, clinic, orphan_ids):
    """Raw lab rows, not yet numbered: [when, patient, vendor, code, name, result, unit]."""
    if clinic == "a":
        vendor_mix = [("QUEST", 45), ("LABCORP", 35), ("INHOUSE", 20)]
    else:
        vendor_mix = [("SUNQUEST", 55), ("LABCORP", 30), ("INHOUSE", 15)]
    end = day("2024-12-31")
    rows = []
    for p in patients:
        home = rng.weighted(vendor_mix)
        n_draws = 1 + rng.randint(0, 6) + (rng.randint(0, 4) if p["alb_slope"] < -0.3 else 0)
        t = p["dx_date"] - dt.timedelta(days=rng.randint(0, 30))
        for _ in range(n_draws):
            if t > end:
                break
            vendor = home if rng.chance(0.85) else rng.weighted(vendor_mix)
            years = (t - p["dx_date"]).days / 365.25
            when = "%s %02d:%02d" % (t.isoformat(), rng.randint(7, 16), rng.randint(0, 59))
            if rng.chance(0.2):
                when = when.replace(" ", "T") + ":00"
            values = {
                "alb": clip(p["alb0"] + p["alb_slope"] * years + 0.15 * rng.normal(), 1.5, 5.2),
                "cre": clip(p["cre0"] * (1 + 0.08 * years) + 0.08 * rng.normal(), 0.35, 4.5),
                "hgb": clip(p["hgb0"] - 0.6 * years + 0.6 * rng.normal(), 7.0, 17.5),
            }
            for analyte, p_drawn in (("alb", 0.9), ("cre", 0.85), ("hgb", 0.95)):
                if not rng.chance(p_drawn):
                    continue
                code, name, unit, kind = VENDORS[vendor][analyte]
                result = fmt_value(values[analyte], kind)
                r = rng.random()
                if r < 0.012:
                    result = rng.choice(["HEMOLYZED", "QNS", "see comment"])
                elif r < 0.017:
                    result = ""
                if vendor == "LABCORP" and clinic == "b" and rng.chance(0.3):
                    code = str(int(code))  # leading zeros lost in a spreadsheet
                if vendor == "QUEST" and analyte == "alb" and rng.chance(0.02):
                    unit = "g/L"  # unit mismatch: value in g/L under the g/dL code
                    result = fmt_value(values[analyte], "gl_int")
                rows.append([when, p["id"], vendor, code, name, result, unit])
            # local codes that reference/lab_map.csv does not know
            if clinic == "a" and vendor == "QUEST" and rng.chance(0.12):
                rows.append([when, p["id"], vendor, "PREALB", "Prealbumin", "%.0f" % clip(14 + 6 * rng.normal(), 3, 40), "mg/dL"])
            if clinic == "a" and vendor == "INHOUSE" and rng.chance(0.25):
                rows.append([when, p["id"], vendor, "ALB-U", "Albumin urine", "%d" % rng.randint(3, 80), "mg/L"])
            if clinic == "b" and vendor == "SUNQUEST" and rng.chance(0.1):
                rows.append([when, p["id"], vendor, "CRP", "C-REACTIVE PROTEIN", "%.1f" % clip(8 + 10 * rng.normal(), 0.2, 90), "mg/L"])
            t = t + dt.timedelta(days=rng.randint(20, 160))
    for oid in orphan_ids:  # results for patients missing from the patient export
        code, name, unit, kind = VENDORS[vendor_mix[0][0]]["alb"]
        rows.append(["2022-05-1%d 08:30" % rng.randint(0, 9), oid, vendor_mix[0][0], code, name, "4.1", unit])
    # spell vendors the way the interfaces do
    for row in rows:
        row[2] = rng.weighted(VENDOR_SPELLINGS[row[2]])
    rows.sort(key=lambda r: (r[0].replace("T", " ")[:16], str(r[1]), r[3]))
    return rows


def write_csv(path, header, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow(r)


def write_labs(path, rows, prefix):
    out = []
    for i, (when, pid, vendor, code, name, result, unit) in enumerate(rows):
        out.append(["%s%07d" % (prefix, 1000001 + i), pid, when, vendor, code, name, result, unit])
    write_csv(
        path,
        ["lab_id", "patient_id", "collected_at", "vendor", "test_code", "test_name", "result", "unit"],
        out,
    )


def write_physicians(path, physicians):
    write_csv(
        path,
        ["physician_id", "npi", "specialty", "active"],
        [[p["physician_id"], p["npi"], p["specialty"], p["active"]] for p in physicians],
    )


# ---------------------------------------------------------------------------
# Clinic A: the standard export.


def clinic_a(root):
    rng = Rand(20240611)
    physicians = make_physicians(rng, "P", 14)
    ids = ["%08d" % x for x in sorted(rng.distinct_ints(100000, 899999, 320))]
    patients = make_patients(rng, 320, physicians, ids)
    orphans = ["%08d" % x for x in rng.distinct_ints(990000, 999999, 4)]

    rows = []
    for p in patients:
        sex = p["sex"]
        r = rng.random()
        if r < 0.04:
            sex = sex.lower()
        elif r < 0.06:
            sex = "U"
        elif r < 0.08:
            sex = ""
        zip_code = "" if rng.chance(0.03) else rng.choice(["021", "024", "018", "017"]) + "%02d" % rng.randint(1, 99)
        vital = "" if rng.chance(0.04) else ("DECEASED" if p["deceased"] else "ALIVE")
        birth = "" if rng.chance(0.02) else p["birth"].isoformat()
        rows.append([p["id"], birth, sex, p["physician"], zip_code, vital])
    for k in (17, 101, 102, 250):  # re-exported records: exact duplicates
        rows.insert(k + 1, list(rows[k]))
    base = os.path.join(root, "clinic_a")
    write_csv(
        os.path.join(base, "varian", "patients.csv"),
        ["patient_id", "birth_date", "sex", "physician_id", "zip", "vital_status"],
        rows,
    )
    write_physicians(os.path.join(base, "physicians.csv"), physicians)
    write_csv(
        os.path.join(base, "varian", "diagnoses.csv"),
        ["patient_id", "dx_code", "dx_date"],
        make_diagnoses(rng, patients, orphans),
    )
    write_labs(os.path.join(base, "varian", "lab_results.csv"), make_labs(rng, patients, "a", orphans), "LA")


# ---------------------------------------------------------------------------
# Clinic B: a different patient export.


def clinic_b(root):
    rng = Rand(20240612)
    physicians = make_physicians(rng, "P", 11)
    ids = sorted(rng.distinct_ints(50000, 58999, 260))
    patients = make_patients(rng, 260, physicians, ids)
    orphans = rng.distinct_ints(59000, 59999, 3)

    rows = []
    for p in patients:
        b = p["birth"]
        r = rng.random()
        if r < 0.05:
            birth = ""
        elif r < 0.40:
            birth = "%02d/%02d/%04d" % (b.month, b.day, b.year)
        else:
            birth = "%d/%d/%04d" % (b.month, b.day, b.year)
        r = rng.random()
        sex_cd = "9" if r < 0.02 else "" if r < 0.04 else ("1" if p["sex"] == "M" else "2")
        r = rng.random()
        if r < 0.03:
            postal = ""
        else:
            postal = rng.choice(["029", "028"]) + "%02d" % rng.randint(1, 99)
            if r < 0.33:
                postal += "-%04d" % rng.randint(1, 9999)
        deceased = "" if rng.chance(0.05) else ("Y" if p["deceased"] else "N")
        rows.append([p["id"], birth, sex_cd, p["physician"], postal, deceased])
    rows.append(["", "", "", "", "", ""])  # export trailer: empty records
    rows.append(["", "1/1/1900", "9", "", "", ""])
    base = os.path.join(root, "clinic_b")
    write_csv(
        os.path.join(base, "varian", "patients.csv"),
        ["pt_id", "birth_date", "sex_cd", "attending_id", "postal_code", "deceased"],
        rows,
    )
    write_physicians(os.path.join(base, "physicians.csv"), physicians)
    write_csv(
        os.path.join(base, "varian", "diagnoses.csv"),
        ["patient_id", "dx_code", "dx_date"],
        make_diagnoses(rng, patients, orphans),
    )
    write_labs(os.path.join(base, "varian", "lab_results.csv"), make_labs(rng, patients, "b", orphans), "LB")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "data")
    clinic_a(root)
    clinic_b(root)


if __name__ == "__main__":
    main()
