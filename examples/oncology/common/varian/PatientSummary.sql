-- @include action/sql/sqlite
-- @depend ./Patient
-- @depend ./Physician
-- @depend ./Diagnosis
-- @depend ./Albumin
-- @depend ./Hemoglobin
-- @key patient_id
-- @assert not_null(patient_id)
-- @assert unique(patient_id)
-- @assert rows > 0
-- @assert sql: SELECT * FROM PatientSummary WHERE n_cancer_dx < 0 OR age_at_dx NOT BETWEEN 18 AND 100
-- One row per patient: treating physician, number of cancer diagnoses,
-- the primary cancer (earliest non-secondary code), age at diagnosis, and
-- the latest albumin and hemoglobin. Every patient appears, with NULLs
-- where a part is missing (left joins).
WITH dx AS (
  SELECT patient_id, count(*) AS n_cancer_dx
  FROM Diagnosis
  GROUP BY patient_id
),
primary_dx AS (
  SELECT
    patient_id, icd10, site, first_dx_date,
    row_number() OVER (
      PARTITION BY patient_id
      ORDER BY site = 'secondary', first_dx_date IS NULL, first_dx_date, icd10
    ) AS rn
  FROM Diagnosis
),
alb AS (
  SELECT
    patient_id, value, collected_date, low_albumin,
    row_number() OVER (PARTITION BY patient_id ORDER BY collected_date DESC, lab_id DESC) AS rn
  FROM Albumin
),
hgb AS (
  SELECT
    patient_id, value, collected_date,
    row_number() OVER (PARTITION BY patient_id ORDER BY collected_date DESC, lab_id DESC) AS rn
  FROM Hemoglobin
)
SELECT
  p.patient_id,
  p.sex,
  p.vital_status,
  p.physician_id,
  ph.npi AS physician_npi,
  ph.specialty AS physician_specialty,
  coalesce(dx.n_cancer_dx, 0) AS n_cancer_dx,
  pd.icd10 AS primary_icd10,
  pd.site AS primary_site,
  pd.first_dx_date,
  CAST((julianday(pd.first_dx_date) - julianday(p.birth_date)) / 365.25 AS INTEGER) AS age_at_dx,
  alb.value AS latest_albumin_g_dl,
  alb.collected_date AS latest_albumin_date,
  alb.low_albumin,
  hgb.value AS latest_hemoglobin_g_dl
FROM Patient p
LEFT JOIN Physician ph ON ph.physician_id = p.physician_id
LEFT JOIN dx ON dx.patient_id = p.patient_id
LEFT JOIN primary_dx pd ON pd.patient_id = p.patient_id AND pd.rn = 1
LEFT JOIN alb ON alb.patient_id = p.patient_id AND alb.rn = 1
LEFT JOIN hgb ON hgb.patient_id = p.patient_id AND hgb.rn = 1
ORDER BY p.patient_id;
