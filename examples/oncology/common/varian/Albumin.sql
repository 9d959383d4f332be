-- @include common/varian/_lab_base.sql
-- @param loinc=1751-7
-- @param albumin_low=3.5
-- @assert sql: SELECT * FROM Albumin WHERE unit <> 'g/dL' OR value NOT BETWEEN 1.0 AND 6.0
-- Serum albumin (LOINC 1751-7) in g/dL, whichever vendor and unit it came
-- in: Quest ALB, LabCorp 001081, Sunquest ALBU (g/dL) and the in-house
-- ALB-S (g/L, factor 0.1 in lab_map.csv). Directives come from
-- _lab_base.sql; this body replaces the base's to add the hypoalbuminemia
-- flag. The threshold is a parameter: 3.5 g/dL by default, a clinic's mount
-- file may set another. The plausibility assert above is what catches a
-- g/L value slipping through unscaled (38 g/dL).
SELECT
  lab_id,
  patient_id,
  collected_date,
  round(value * factor_to_std, {{decimals}}) AS value,
  std_unit AS unit,
  vendor,
  CASE WHEN round(value * factor_to_std, {{decimals}}) < {{albumin_low}} THEN 1 ELSE 0 END AS low_albumin
FROM Labs
WHERE loinc = '{{loinc}}'
  AND map_status = 'mapped'
  AND value IS NOT NULL
ORDER BY patient_id, collected_date, lab_id;
