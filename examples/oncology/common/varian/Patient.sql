-- @source data://{{clinic}}/varian/patients.csv
-- @key patient_id
-- @assert not_null(patient_id)
-- @assert unique(patient_id)
-- @assert rows > 0
-- @assert sql: SELECT * FROM Patient WHERE sex NOT IN ('F', 'M') OR vital_status NOT IN ('alive', 'deceased')
-- Patient demographics from the standard ARIA export, one row per patient.
-- The MRN is zero-padded ('00104217') and stays text end to end.
-- Output columns (a clinic that overrides this node must produce the same):
--   patient_id, birth_date (YYYY-MM-DD), sex ('F'/'M'/NULL), physician_id,
--   zip3 (first three ZIP digits only), vital_status ('alive'/'deceased'/NULL)
SELECT DISTINCT  -- the export repeats re-exported records verbatim
  patient_id,
  birth_date,
  CASE upper(trim(sex)) WHEN 'F' THEN 'F' WHEN 'M' THEN 'M' END AS sex,
  physician_id,
  substr(zip, 1, 3) AS zip3,
  lower(vital_status) AS vital_status
FROM patients
WHERE patient_id IS NOT NULL
ORDER BY patient_id;
