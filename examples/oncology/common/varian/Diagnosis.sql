-- @depend ./Patient
-- @source data://{{clinic}}/varian/diagnoses.csv
-- @key patient_id, icd10
-- @assert not_null(patient_id)
-- @assert not_null(icd10)
-- @assert rows > 0
-- @assert sql: SELECT * FROM Diagnosis WHERE icd10 NOT GLOB 'C[0-9][0-9]*'
-- Cancer diagnoses (ICD-10 chapter II, C00-C96), one row per patient and
-- code, dated by the first encounter that recorded it. The export mixes
-- 'C50.9', 'C509', 'c50.9' and ' C50.9 ', and also carries non-cancer
-- codes (I10, Z51.11, ...) and rows for ids missing from Patient; the
-- inner join with Patient drops the latter.
WITH coded AS (
  SELECT patient_id, upper(replace(trim(dx_code), '.', '')) AS code, dx_date
  FROM diagnoses
),
cancer AS (
  SELECT
    patient_id,
    CASE WHEN length(code) > 3 THEN substr(code, 1, 3) || '.' || substr(code, 4) ELSE code END AS icd10,
    dx_date
  FROM coded
  WHERE code GLOB 'C[0-9][0-9]*'
)
SELECT
  c.patient_id,
  c.icd10,
  CASE
    WHEN c.icd10 GLOB 'C50*' THEN 'breast'
    WHEN c.icd10 GLOB 'C34*' THEN 'lung'
    WHEN c.icd10 GLOB 'C1[89]*' OR c.icd10 GLOB 'C20*' THEN 'colorectal'
    WHEN c.icd10 GLOB 'C61*' THEN 'prostate'
    WHEN c.icd10 GLOB 'C25*' THEN 'pancreas'
    WHEN c.icd10 GLOB 'C43*' THEN 'melanoma'
    WHEN c.icd10 GLOB 'C56*' THEN 'ovary'
    WHEN c.icd10 GLOB 'C67*' THEN 'bladder'
    WHEN c.icd10 GLOB 'C8[1-8]*' THEN 'lymphoma'
    WHEN c.icd10 GLOB 'C90*' THEN 'myeloma'
    WHEN c.icd10 GLOB 'C16*' THEN 'stomach'
    WHEN c.icd10 GLOB 'C0*' OR c.icd10 GLOB 'C1[0-4]*' OR c.icd10 GLOB 'C3[0-2]*' THEN 'head_neck'
    WHEN c.icd10 GLOB 'C7[7-9]*' THEN 'secondary'
    ELSE 'other'
  END AS site,
  min(c.dx_date) AS first_dx_date,
  count(*) AS n_records
FROM cancer c
JOIN Patient p ON p.patient_id = c.patient_id
GROUP BY c.patient_id, c.icd10
ORDER BY c.patient_id, c.icd10;
