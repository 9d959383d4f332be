-- @include common/varian/Patient.sql
-- Clinic B overrides the mounted common/varian/Patient: its ARIA 16 patient
-- export names and codes things differently. The include above inherits the
-- common node's @source, @key and @assert lines (the output contract); this
-- body replaces the common one and must produce the same columns.
--   pt_id         plain integer id                 -> patient_id
--   birth_date    M/D/YYYY, padded or not          -> YYYY-MM-DD
--   sex_cd        1 = male, 2 = female, 9 = unknown -> 'M' / 'F' / NULL
--   attending_id                                   -> physician_id
--   postal_code   ZIP or ZIP+4                     -> zip3
--   deceased      Y / N                            -> vital_status
-- Trailer records without an id are dropped.
WITH raw AS (
  SELECT
    pt_id,
    trim(birth_date) AS bd,
    instr(trim(birth_date), '/') AS s1,
    sex_cd,
    attending_id,
    postal_code,
    deceased
  FROM patients
  WHERE pt_id IS NOT NULL
),
split AS (
  SELECT *,
    substr(bd, 1, s1 - 1) AS mm,
    substr(bd, s1 + 1) AS rest
  FROM raw
)
SELECT
  pt_id AS patient_id,
  CASE WHEN bd IS NULL THEN NULL ELSE
    printf('%04d-%02d-%02d',
      substr(rest, instr(rest, '/') + 1),
      mm,
      substr(rest, 1, instr(rest, '/') - 1))
  END AS birth_date,
  CASE sex_cd WHEN 1 THEN 'M' WHEN 2 THEN 'F' END AS sex,
  attending_id AS physician_id,
  substr(postal_code, 1, 3) AS zip3,
  CASE upper(deceased) WHEN 'Y' THEN 'deceased' WHEN 'N' THEN 'alive' END AS vital_status
FROM split
ORDER BY patient_id;
