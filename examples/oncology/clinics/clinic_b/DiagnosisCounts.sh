#!/usr/bin/env bash
# @depend ./Diagnosis
# @param min_cell=11
# @key site
# @assert not_null(site)
# @assert rows > 0
# @timeout 30s
# Patients per cancer site (clinic B only): a bash node using awk and sort.
# A patient counts once per site ('secondary' = metastatic codes C77-C79).
# Counts under min_cell are suppressed (n_patients NULL, suppressed = 1),
# the usual small-cell rule before a table leaves the clinic (CMS policy:
# no cell of 1 to 10).
# Contract: input CSV in $SLUICE_INPUT_Diagnosis, output CSV to
# $SLUICE_OUTPUT, parameters as $SLUICE_PARAM_<name>.
set -euo pipefail

min_cell="$SLUICE_PARAM_min_cell"

{
  printf 'site,n_patients,suppressed\n'
  # Diagnosis has no quoted fields (ids, codes, dates, site words), so
  # splitting on commas is safe here. Columns are found by header name.
  awk -F, -v min="$min_cell" '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    {
      site = $(col["site"]); pid = $(col["patient_id"])
      if (!((site, pid) in seen)) { seen[site, pid] = 1; n[site]++ }
    }
    END {
      for (s in n) {
        if (n[s] < min) print s ",,1"
        else print s "," n[s] ",0"
      }
    }
  ' "$SLUICE_INPUT_Diagnosis" | LC_ALL=C sort
} > "$SLUICE_OUTPUT"
