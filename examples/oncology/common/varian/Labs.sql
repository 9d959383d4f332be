-- @depend ./Patient
-- @depend /reference/lab_map
-- @source data://{{clinic}}/varian/lab_results.csv
-- @key lab_id
-- @assert not_null(lab_id)
-- @assert unique(lab_id)
-- @assert not_null(collected_date)
-- @assert rows > 0
-- @assert sql: SELECT * FROM Labs WHERE value < 0
-- Every lab result of the clinic's patients, with the clinic-local code
-- mapped to LOINC through reference/lab_map.csv (vendor, code and unit must
-- all match). Nothing is dropped silently: map_status says why a row has no
-- LOINC code --
--   'mapped'         vendor, code and unit found in lab_map
--   'unit_mismatch'  the code is known but arrived in another unit (e.g. a
--                    g/dL albumin code carrying a g/L value); scaling it by
--                    the map's factor would be wrong, so it is not mapped
--   'unmapped'       the code is not in lab_map (PREALB, ALB-U, CRP, ...)
-- Only 'mapped' rows reach the analyte nodes (Albumin, ...);
-- UnmappedLabCodes lists the others for whoever curates the map.
-- Non-numeric results ('HEMOLYZED', 'QNS') keep their text in result_text
-- and have a NULL value. Results for ids missing from Patient are dropped.
WITH raw AS (
  SELECT
    lab_id,
    patient_id,
    date(collected_at) AS collected_date,
    upper(trim(vendor)) AS vendor,
    -- LabCorp codes are six digits with leading zeros ('001081'); part of
    -- one export went through a spreadsheet that turned them into numbers.
    CASE
      WHEN typeof(test_code) = 'integer' AND upper(trim(vendor)) = 'LABCORP' THEN printf('%06d', test_code)
      ELSE trim(test_code)
    END AS local_code,
    test_name,
    result,
    trim(unit) AS unit
  FROM lab_results
)
SELECT
  r.lab_id,
  r.patient_id,
  r.collected_date,
  r.vendor,
  r.local_code,
  r.test_name AS local_name,
  CASE WHEN typeof(r.result) IN ('integer', 'real') THEN r.result END AS value,
  CASE WHEN typeof(r.result) = 'text' THEN r.result END AS result_text,
  r.unit,
  m.loinc,
  m.std_unit,
  m.factor_to_std,
  CASE
    WHEN m.loinc IS NOT NULL THEN 'mapped'
    WHEN EXISTS (SELECT 1 FROM lab_map k WHERE k.vendor = r.vendor AND k.local_code = r.local_code) THEN 'unit_mismatch'
    ELSE 'unmapped'
  END AS map_status
FROM raw r
JOIN Patient p ON p.patient_id = r.patient_id
LEFT JOIN lab_map m
  ON m.vendor = r.vendor AND m.local_code = r.local_code AND lower(m.unit) = lower(r.unit)
ORDER BY r.lab_id;
