-- @depend ./Labs
-- @key lab_id
-- @assert not_null(patient_id)
-- @assert not_null(collected_date)
-- @assert not_null(value)
-- @assert unique(lab_id)
-- @assert rows > 0
-- @param decimals=2
-- Base for single-analyte lab nodes (the leading '_' makes this file a
-- base, not a node). A node includes it and sets `loinc`; it may override
-- `decimals` or replace this body. One row per numeric, mapped result of
-- that LOINC code, converted to the standard unit of lab_map.csv.
SELECT
  lab_id,
  patient_id,
  collected_date,
  round(value * factor_to_std, {{decimals}}) AS value,
  std_unit AS unit,
  vendor
FROM Labs
WHERE loinc = '{{loinc}}'
  AND map_status = 'mapped'
  AND value IS NOT NULL
ORDER BY patient_id, collected_date, lab_id;
